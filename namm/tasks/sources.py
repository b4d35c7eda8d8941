"""Real text that is on every machine with our Python: haystacks for the tasks.

* Prose: the Python Language Reference as shipped in the standard library
  (``pydoc_data.topics``, the text behind ``help('assert')``), and the docstrings of standard
  library modules. Only paragraphs that read as prose are kept (no indented code or grammar
  blocks, no underlines). The interpreter version is pinned by pyproject (3.11), so the text is
  the same everywhere.
* Code: the top-level definitions of the standard library's own ``.py`` files, found through
  ``sysconfig.get_paths()["stdlib"]``.

Every document and module has a source id (``pydoc:assert``, ``module:argparse``); a module's
docstring and its code share the id, so they always fall into the same split.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import sysconfig
from dataclasses import dataclass

from namm.tasks.splits import check_split, split_of

# packages whose code is test data, generated tables or GUI demos rather than library code
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__pycache__",
              "tkinter", "ensurepip", "venv", "pydoc_data", "encodings"}


@dataclass(frozen=True)
class ProseDoc:
    source_id: str
    title: str
    paragraphs: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n\n".join(self.paragraphs)


@dataclass(frozen=True)
class CodeUnit:
    """One top-level statement group of a module (a def, a class, or a run of assignments)."""

    source_id: str
    module: str
    text: str


def stdlib_dir() -> str:
    return sysconfig.get_paths()["stdlib"]


def _module_files() -> list[tuple[str, str]]:
    """(module name, path) of every standard library .py file outside the skipped packages."""
    root = stdlib_dir()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if not name.endswith(".py") or name.startswith("_"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), root)[:-3]
            found.append((rel.replace(os.sep, "."), os.path.join(dirpath, name)))
    return found


@functools.lru_cache(maxsize=None)
def _parsed_modules() -> tuple[tuple[str, str, ast.Module], ...]:
    out = []
    for module, path in _module_files():
        try:
            with open(path, encoding="utf-8") as fh:
                source = fh.read()
            tree = ast.parse(source)
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        out.append((module, source, tree))
    return tuple(out)


_UNDERLINE = re.compile(r"^[*=\-~^#]{3,}\s*$")


def prose_paragraphs(text: str) -> list[str]:
    """Paragraphs of running English text: no code blocks, lists of options or headings."""
    keep = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.split("\n") if ln.strip()]
        if not lines or any(ln.startswith((" ", "\t")) for ln in lines):
            continue  # indented: code, grammar or a table
        if any(_UNDERLINE.match(ln.strip()) for ln in lines):
            continue
        para = " ".join(ln.strip() for ln in lines)
        letters = sum(ch.isalpha() or ch == " " for ch in para)
        if len(para) < 120 or letters < 0.85 * len(para) or not para.endswith((".", ":")):
            continue
        keep.append(para)
    return keep


@functools.lru_cache(maxsize=None)
def _all_prose_docs() -> tuple[ProseDoc, ...]:
    import pydoc_data.topics as topics

    docs = []
    for key, text in sorted(topics.topics.items()):
        paras = prose_paragraphs(text)
        first = text.strip().split("\n", 1)[0].strip()
        if paras:
            docs.append(ProseDoc(f"pydoc:{key}", first or key, tuple(paras)))
    for module, _source, tree in _parsed_modules():
        paras = list(prose_paragraphs(ast.get_docstring(tree) or ""))
        # the docstrings of the module's classes and functions are prose about the module too
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                paras += prose_paragraphs(ast.get_docstring(node) or "")
        paras = list(dict.fromkeys(paras))  # inherited docstrings repeat verbatim
        if sum(len(p) for p in paras) >= 400:
            docs.append(ProseDoc(f"module:{module}", f"The {module} module", tuple(paras)))
    return tuple(docs)


def prose_docs(split: str) -> list[ProseDoc]:
    check_split(split)
    return [d for d in _all_prose_docs() if split_of(d.source_id) == split]


def _units_of(module: str, source: str, tree: ast.Module) -> list[CodeUnit]:
    """Top-level defs and classes, each with its decorators; module docstrings and imports are
    left out (the docstrings are prose sources, the imports are noise)."""
    units = []
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign)):
            continue
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        text = "\n".join(source.splitlines()[start - 1:node.end_lineno])
        if len(text) > 6000:  # one giant class would swallow a whole short context
            continue
        units.append(CodeUnit(f"module:{module}", module, text))
    return units


@functools.lru_cache(maxsize=None)
def _all_code_modules() -> tuple[tuple[str, tuple[CodeUnit, ...]], ...]:
    out = []
    for module, source, tree in _parsed_modules():
        units = _units_of(module, source, tree)
        if len(units) >= 3:
            out.append((module, tuple(units)))
    return tuple(out)


def code_modules(split: str) -> list[tuple[str, tuple[CodeUnit, ...]]]:
    """(module, units) of the split's stdlib modules, in a stable order."""
    check_split(split)
    return [(m, u) for m, u in _all_code_modules() if split_of(f"module:{m}") == split]
