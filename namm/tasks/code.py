"""Code tasks over real standard library source.

The context is whole top-level definitions of the split's stdlib modules, grouped under
``# File: path.py`` headers, so every file section parses on its own. One definition holds the
fact asked about; the rest of the context is filled with definitions that never mention the
names involved, so the answer is unique by construction:

* ``code_constant``: the value of a module-level constant (``NAME = literal``);
* ``code_calls``: the only function or method that calls a given function;
* ``code_returns``: what a function with a single ``return`` returns (the source expression).
"""

from __future__ import annotations

import ast
import functools
import random
import re
from dataclasses import dataclass

from namm.tasks.base import Sample, register
from namm.tasks.lengths import chars_for_tokens
from namm.tasks.metrics import contains
from namm.tasks.sources import CodeUnit, code_modules

FILE_HEADER = "# File: {path}.py"
_TRIVIAL_RETURNS = {"None", "True", "False", "self", "cls", "result", "res", "ret", "rv"}


@dataclass(frozen=True)
class Fact:
    unit: CodeUnit
    names: tuple[str, ...]  # names no other unit of the context may mention
    question: str
    answer: tuple[str, ...]  # accepted forms
    meta: tuple[tuple[str, str], ...] = ()


def parse_sections(context: str) -> list[tuple[str, ast.Module]]:
    """(path, parsed code) of every file section of a code context."""
    parts = re.split(r"^# File: (\S+)\.py$", context, flags=re.M)
    return [(parts[i], ast.parse(parts[i + 1])) for i in range(1, len(parts), 2)]


def functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def own_nodes(fn: ast.AST):
    """Nodes of a function's body, not descending into nested functions, classes or lambdas."""
    stack = list(ast.iter_child_nodes(fn))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))


def called_names(fn: ast.AST) -> set[str]:
    names = set()
    for node in own_nodes(fn):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):
                names.add(f.id)
            elif isinstance(f, ast.Attribute):
                names.add(f.attr)
    return names


def returns_of(fn: ast.AST) -> list[ast.Return]:
    return [n for n in own_nodes(fn) if isinstance(n, ast.Return)]


def _constant_value(node: ast.AST) -> str | None:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _constant_value(node.operand)
        return f"-{inner}" if inner else None
    if not isinstance(node, ast.Constant) or isinstance(node.value, bool):
        return None
    v = node.value
    if isinstance(v, (int, float)) and len(str(v)) >= 3:  # "0" or "10" would be guessed
        return str(v)
    if isinstance(v, str) and 3 <= len(v) <= 40 and v.isprintable() and any(c.isalnum() for c in v):
        return v
    return None


def _constant_facts(unit: CodeUnit, tree: ast.Module) -> list[Fact]:
    node = tree.body[0]
    if not (isinstance(node, ast.Assign) and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)):
        return []
    name = node.targets[0].id
    value = _constant_value(node.value)
    if value is None or not name.isupper() or len(name) < 3 or unit.text.count(name) != 1:
        return []
    literal = ast.get_source_segment(unit.text, node.value) or value
    answers = tuple(dict.fromkeys([value, literal]))
    return [Fact(unit, (name,), f"What is the value of the constant {name}?", answers)]


def _call_facts(unit: CodeUnit, tree: ast.Module) -> list[Fact]:
    fns = functions(tree)
    names = [f.name for f in fns]
    callers: dict[str, list[str]] = {}
    for fn in fns:
        for callee in called_names(fn):
            callers.setdefault(callee, []).append(fn.name)
    facts = []
    for callee, who in sorted(callers.items()):
        caller = who[0]
        if (len(who) == 1 and names.count(caller) == 1 and callee != caller and len(callee) >= 4
                and not callee.startswith("__") and not caller.startswith("__")
                and len(caller) >= 4):
            facts.append(Fact(unit, (callee, caller),
                              f"Which function or method calls {callee}()? Answer with its name.",
                              (caller,), (("callee", callee),)))
    return facts


def _return_facts(unit: CodeUnit, tree: ast.Module) -> list[Fact]:
    fns = functions(tree)
    names = [f.name for f in fns]
    facts = []
    for fn in fns:
        rets = returns_of(fn)
        if len(rets) != 1 or rets[0].value is None or names.count(fn.name) != 1:
            continue
        expr = ast.get_source_segment(unit.text, rets[0].value)
        if (expr is None or not 4 <= len(expr) <= 60 or "\n" in expr or expr in _TRIVIAL_RETURNS
                or fn.name.startswith("__") or len(fn.name) < 4):
            continue
        facts.append(Fact(unit, (fn.name,), f"What does the function {fn.name}() return? "
                          "Answer with the returned expression.", (expr,), (("function", fn.name),)))
    return facts


_FINDERS = {"code_constant": _constant_facts, "code_calls": _call_facts, "code_returns": _return_facts}


@functools.lru_cache(maxsize=None)
def candidate_facts(task: str, split: str) -> tuple[Fact, ...]:
    found = []
    for _module, units in code_modules(split):
        for unit in units:
            try:
                tree = ast.parse(unit.text)
            except SyntaxError:  # a unit cut from a file with odd indentation
                continue
            found += _FINDERS[task](unit, tree)
    return tuple(found)


def _mentions(unit: CodeUnit, names: tuple[str, ...]) -> bool:
    return any(re.search(rf"\b{re.escape(n)}\b", unit.text) for n in names)


def render_sections(sections: list[tuple[str, list[str]]]) -> str:
    return "\n\n\n".join(FILE_HEADER.format(path=module.replace(".", "/")) + "\n\n" + "\n\n\n".join(texts)
                         for module, texts in sections)


def build_code_context(fact: Fact, rng: random.Random, length: int, split: str) -> str:
    """Fill with runs of other modules' definitions that never mention the fact's names, and
    put the fact's definition in its own file section at a random position."""
    budget = chars_for_tokens(length, "code") - len(fact.unit.text)
    modules = [(m, u) for m, u in code_modules(split) if m != fact.unit.module]
    rng.shuffle(modules)
    sections: list[tuple[str, list[str]]] = []
    used = 0
    for module, units in modules:
        if used >= budget:
            break
        start = rng.randrange(len(units))
        texts = []
        for unit in units[start:] + units[:start]:
            if used >= budget:
                break
            if _mentions(unit, fact.names) or used + len(unit.text) > budget + 400:
                continue
            texts.append(unit.text)
            used += len(unit.text) + 3
        if texts:
            sections.append((module, texts))
    sections.insert(rng.randrange(len(sections) + 1), (fact.unit.module, [fact.unit.text]))
    return render_sections(sections)


def _echo_safe(fact: Fact) -> bool:
    """False when repeating the question would already 'contain' the answer (BLANKLINE_MARKER's
    value is '<BLANKLINE>'; a caller named parse of parse_args)."""
    return not any(contains(fact.question, a) for a in fact.answer)


def _build(task: str, rng: random.Random, length: int, split: str) -> Sample:
    fact = rng.choice([f for f in candidate_facts(task, split) if _echo_safe(f)])
    context = build_code_context(fact, rng, length, split)
    answer: str | list[str] = fact.answer[0] if len(fact.answer) == 1 else list(fact.answer)
    return Sample(task, context, fact.question, answer,
                  {"haystack": "code", "module": fact.unit.module, "names": list(fact.names),
                   **dict(fact.meta)})


# 40 tokens: "The value of the constant AUDIO_FILE_MAGIC is 0x2e736e64." is 26 (digits are
# single tokens), and 24 cut it before the answer was complete
@register("code_constant", family="code", metric="contains", max_new_tokens=40,
          description="the value of a module-level constant in real stdlib code")
def code_constant(rng: random.Random, length: int, split: str) -> Sample:
    return _build("code_constant", rng, length, split)


@register("code_calls", family="code", metric="contains", max_new_tokens=24,
          description="which function calls a given function, in real stdlib code")
def code_calls(rng: random.Random, length: int, split: str) -> Sample:
    return _build("code_calls", rng, length, split)


@register("code_returns", family="code", metric="contains", max_new_tokens=32,
          description="what a function returns, in real stdlib code")
def code_returns(rng: random.Random, length: int, split: str) -> Sample:
    return _build("code_returns", rng, length, split)
