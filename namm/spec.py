"""The contract between the library and everything that calls it: the CLI, `namm eval`, the REST
service and its workers. Policy names, the memory budget with its unit, the generation request
and the default prompts are defined here once, and validated here once.

Torch-free on purpose: the service's API process imports this module and never the model.

Budgets carry their unit::

    Budget.parse({"fraction": 0.3})   # keep at most 30% of the tokens read, per layer and KV head
    Budget.parse({"tokens": 2048})    # keep at most 2048 tokens per layer and KV head
    Budget.parse(0.3)                 # a plain number is a fraction, for convenience
    Budget.parse(2048)                # BudgetError: ambiguous (1 and 1.0 look alike in JSON)

In Python code the library also takes plain numbers the way it always has (`Budget.coerce`): an
`int` is a token count, a `float` up to 1 a fraction. Data that crossed a boundary (JSON, a
database column, a form field) goes through `Budget.parse`, which trusts no number type.
"""
from __future__ import annotations

import io
import json
import math
import operator
import pickle
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from .errors import BudgetError, EmptyInputError, RequestError, UnknownPolicyError

# ---- policies ------------------------------------------------------------------------------
POLICY_NAMES: tuple[str, ...] = (
    "full", "surprisal", "namm", "recency", "streaming_llm", "h2o", "l2norm", "snapkv", "tova", "random",
)
# The memory the product ships and uses when none is named: sinks, a recent window and word
# surprisal (namm/policies/surprisal.py). `namm` is the learned attention memory; it becomes the
# default only once an evolved scorer beats `surprisal` (namm/checkpoints/CARD.md).
DEFAULT_POLICY = "surprisal"
# Policies whose default budget is the shipped checkpoint's (both read their settings from it).
CHECKPOINT_POLICIES: frozenset[str] = frozenset({"surprisal", "namm"})
# Policies that never evict: a budget means nothing to them.
NON_EVICTING_POLICIES: frozenset[str] = frozenset({"full"})


def policy_name(name: str) -> str:
    """The canonical name ('StreamingLLM' and 'streaming-llm' -> 'streaming_llm'), or
    UnknownPolicyError listing the valid ones."""
    key = str(name).strip().lower().replace("-", "_")
    if key not in POLICY_NAMES:
        raise UnknownPolicyError(f"unknown policy {name!r}; expected one of the valid policies: "
                                 f"{', '.join(POLICY_NAMES)}")
    return key


# ---- budgets -------------------------------------------------------------------------------
BudgetUnit = Literal["fraction", "tokens"]
BUDGET_UNITS: tuple[str, ...] = ("fraction", "tokens")
BUDGET_FORMS = ('{"fraction": x} with x in (0, 1], {"tokens": n} with a whole n >= 1, '
                "or a plain number in (0, 1] (a fraction)")


def _number(value: Any, what: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BudgetError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise BudgetError(f"{what} must be finite, got {value!r}")
    return value


@dataclass(frozen=True)
class Budget:
    """How much KV cache a policy may keep, per layer and KV head, with its unit.

    unit: ``"fraction"`` (of the tokens read so far, in (0, 1]) or ``"tokens"`` (a whole count >= 1).
    value: the amount in that unit.
    """

    unit: BudgetUnit
    value: float | int

    def __post_init__(self) -> None:
        if self.unit == "fraction":
            value = _number(self.value, "a budget fraction")
            if not 0.0 < value <= 1.0:
                raise BudgetError(f"a budget fraction must be in (0, 1], got {value}")
            object.__setattr__(self, "value", float(value))
        elif self.unit == "tokens":
            value = _number(self.value, "a budget in tokens")
            if isinstance(value, float) and not value.is_integer():
                raise BudgetError(f"a budget in tokens must be a whole number, got {value}")
            if value < 1:
                raise BudgetError(f"a budget in tokens must be >= 1, got {value}")
            object.__setattr__(self, "value", int(value))
        else:
            raise BudgetError(f"unknown budget unit {self.unit!r}; use one of {', '.join(BUDGET_UNITS)}")

    @classmethod
    def fraction(cls, value: float) -> Budget:
        return cls("fraction", value)

    @classmethod
    def tokens(cls, value: int) -> Budget:
        return cls("tokens", value)

    @classmethod
    def parse(cls, value: Any) -> Budget | None:
        """The form that crosses boundaries (JSON bodies, form fields, settings): see BUDGET_FORMS.
        A string holds a number or a JSON object. None stays None (the policy's default)."""
        if value is None or isinstance(value, Budget):
            return value
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("{"):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    raise BudgetError(f"budget {text!r} is not valid JSON; use {BUDGET_FORMS}") from None
            else:
                try:
                    value = float(text)
                except ValueError:
                    raise BudgetError(f"budget {text!r} is not a number; use {BUDGET_FORMS}") from None
        if isinstance(value, dict):
            if len(value) != 1 or next(iter(value)) not in BUDGET_UNITS:
                raise BudgetError(f"a budget object has exactly one key, 'fraction' or 'tokens'; "
                                  f"got {sorted(value)}")
            unit, amount = next(iter(value.items()))
            return cls(unit, amount)
        number = _number(value, "budget")
        if number > 1:
            raise BudgetError(f"budget {number} is ambiguous: a plain number is a kept fraction in "
                              f'(0, 1]; for a token count send {{"tokens": {int(number) if float(number).is_integer() else number}}}')
        if number <= 0:
            raise BudgetError(f"budget must be > 0, got {number}")
        return cls("fraction", number)

    @classmethod
    def coerce(cls, value: Any) -> Budget | None:
        """Python values as the library has always taken them: a Budget, an int (tokens), a
        float in (0, 1] (a fraction) or a whole float above 1 (tokens); None stays None."""
        if value is None or isinstance(value, Budget):
            return value
        if isinstance(value, dict):
            return cls.parse(value)
        number = _number(value, "budget")
        if isinstance(number, int) or number > 1:
            return cls("tokens", number)
        return cls("fraction", number)

    @classmethod
    def parse_text(cls, text: str) -> Budget:
        """A command-line budget: '0.3' (a fraction), '512' (a whole number above 1: tokens),
        or explicitly 'fraction=0.3' / 'tokens=512' (also a JSON object)."""
        text = str(text).strip()
        if "=" in text:
            unit, _, amount = text.partition("=")
            unit = unit.strip().lower()
            if unit not in BUDGET_UNITS:
                raise BudgetError(f"budget {text!r}: the unit is 'fraction' or 'tokens'")
            try:
                number = float(amount)
            except ValueError:
                raise BudgetError(f"budget {text!r}: {amount.strip()!r} is not a number") from None
            return cls(unit, number)  # type: ignore[arg-type]
        if text.startswith("{"):
            return cls.parse(text)  # type: ignore[return-value]
        try:
            number = float(text)
        except ValueError:
            raise BudgetError(f"budget {text!r} is not a number: use a fraction in (0, 1] or a "
                              "token count (tokens=N)") from None
        if number > 1:
            if not number.is_integer():
                raise BudgetError(f"budget {text!r}: above 1 it is a token count and must be whole")
            return cls("tokens", number)
        if number <= 0:
            raise BudgetError(f"budget must be > 0, got {text!r}")
        return cls("fraction", number)

    @property
    def number(self) -> float | int:
        """The library's in-process form: a float fraction or an int token count."""
        return self.value

    def capacity(self, seen: int) -> int:
        """Slots a layer's KV head may keep after reading `seen` tokens."""
        if self.unit == "fraction":
            return max(1, math.ceil(self.value * seen))
        return int(self.value)

    def to_json(self) -> dict[str, float | int]:
        return {self.unit: self.value}

    def __str__(self) -> str:
        return f"{self.value:g}" if self.unit == "fraction" else f"{self.value} tokens"


# Baselines need a budget to evict anything; this is theirs when none is given.
DEFAULT_BASELINE_BUDGET = Budget.fraction(0.25)


def checkpoint_budget(path: str | Path) -> Budget | None:
    """The budget a NAMM checkpoint was shipped with, read without torch.

    A torch checkpoint is a zip holding one pickle (`*/data.pkl`) whose tensors are stored
    apart; the small dict around them is read here with every class and tensor stubbed out, so
    nothing in the file can run code and torch is never imported."""
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl")
        payload = archive.read(name)
    state = _StubUnpickler(io.BytesIO(payload)).load()
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a NAMM checkpoint (a dict was expected)")
    return Budget.coerce(state.get("budget"))


def shipped_namm_budget(model_name: str | None = None) -> Budget | None:
    """The budget of the checkpoint that `make_policy('surprisal')` (and 'namm') loads for `model_name`;
    None when no checkpoint ships (the policy then keeps what its threshold keeps)."""
    from .checkpoints import default_checkpoint

    path = default_checkpoint(model_name)
    return None if path is None else _cached_checkpoint_budget(str(path), path.stat().st_mtime_ns)


def default_budget(policy: str, model_name: str | None = None) -> Budget | None:
    """The budget a policy runs with when none is named: the shipped checkpoint's for surprisal
    and namm (as `make_policy` loads it), none for the full cache, DEFAULT_BASELINE_BUDGET otherwise."""
    name = policy_name(policy)
    if name in CHECKPOINT_POLICIES:
        return shipped_namm_budget(model_name)
    if name in NON_EVICTING_POLICIES:
        return None
    return DEFAULT_BASELINE_BUDGET


@lru_cache(maxsize=8)
def _cached_checkpoint_budget(path: str, _mtime_ns: int) -> Budget | None:
    return checkpoint_budget(path)


def no_trained_scorer_message(model_name: str | None = None) -> str:
    """Why policy `namm` is refused where no evolved scorer ships, and what to use instead."""
    return (f"no trained NAMM attention scorer ships for {model_name or 'the default model'}; use policy "
            "'surprisal' (the shipped memory: attention sinks, a recent window and word surprisal), or "
            "give a checkpoint whose NAMM scorer was evolved (namm/checkpoints/CARD.md)")


def checkpoint_has_trained_scorer(path: str | Path) -> bool:
    """Whether a NAMM checkpoint's scorer parameters (`params`, float32) are not all zero, read
    without torch: the pickle names the storage of the tensor, whose raw bytes sit in the zip."""
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl")
        state = _StubUnpickler(io.BytesIO(archive.read(name))).load()
        params = state.get("params") if isinstance(state, dict) else None
        args = getattr(params, "args", ())
        if len(args) < 3 or not isinstance(args[0], tuple) or len(args[0]) < 3:
            raise ValueError(f"{path}: no scorer parameters (params) in this checkpoint")
        storage, offset, size = args[0], int(args[1]), args[2]
        count = math.prod(int(n) for n in size)
        data = archive.read(name[: -len("data.pkl")] + f"data/{storage[2]}")
    words = memoryview(data[4 * offset: 4 * (offset + count)]).cast("I")
    return any(w & 0x7FFFFFFF for w in words)  # -0.0 is zero too


def shipped_scorer_trained(model_name: str | None = None) -> bool:
    """Whether the checkpoint `make_policy('namm')` would load for `model_name` holds an evolved
    (non-zero) scorer; False when none ships. Torch-free, for the service's API process."""
    from .checkpoints import default_checkpoint

    path = default_checkpoint(model_name)
    return False if path is None else _cached_scorer_trained(str(path), path.stat().st_mtime_ns)


@lru_cache(maxsize=8)
def _cached_scorer_trained(path: str, _mtime_ns: int) -> bool:
    return checkpoint_has_trained_scorer(path)


class _Stub:
    def __init__(self, *args, **kwargs):
        self.args = args  # a rebuilt tensor's (storage, offset, size, stride, ...)

    def __call__(self, *args, **kwargs):
        return _Stub()

    def __setstate__(self, state):
        pass


class _StubUnpickler(pickle.Unpickler):
    SAFE = {("collections", "OrderedDict")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.SAFE:
            return super().find_class(module, name)
        return _Stub  # tensors, numpy arrays, anything else: an inert placeholder

    def persistent_load(self, pid):
        return tuple(pid)  # ('storage', type, key, location, numel): the storage lives in data/<key>


# The memory update interval must be a whole number of STFT hops (namm.features.HOP).
N_UP_MULTIPLE = 16

# ---- prompts -------------------------------------------------------------------------------
# What a document is asked when neither a question nor an instruction is given.
SUMMARIZE_INSTRUCTION = "Summarize the document in a few sentences."


# ---- the request ---------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerationRequest:
    """One call of `namm.generate`: a document, what to ask about it, and the memory to read it
    with. Validated on construction (InputError subclasses say what is wrong).

    context: the document text.
    questions: asked one by one against the same compressed document.
    instruction: a task instruction; asked on its own when there are no questions.
    policy: a name from POLICY_NAMES (in Python, a namm Policy object also does).
    budget: a Budget (or anything `Budget.coerce` takes); None: the policy's default.
    max_new_tokens: answer length cap (>= 1).
    n_up: memory update interval in tokens (a positive multiple of N_UP_MULTIPLE).
    query_aware: show each question before the document too.
    truncate: full cache only, cut a document longer than the model's context.
    """

    context: str
    questions: tuple[str, ...] = ()
    instruction: str | None = None
    policy: str = DEFAULT_POLICY
    budget: Budget | None = None
    max_new_tokens: int = 128
    n_up: int = 512
    query_aware: bool = False
    truncate: bool = False

    def __post_init__(self) -> None:
        if self.context is None or not str(self.context).strip():
            raise EmptyInputError("the document is empty")
        questions = self.questions
        if isinstance(questions, str):
            questions = [questions]
        questions = tuple(str(q) for q in (questions or ()) if q is not None)
        if any(not q.strip() for q in questions):
            raise EmptyInputError("a question is empty")
        object.__setattr__(self, "questions", questions)
        if isinstance(self.policy, str):
            object.__setattr__(self, "policy", policy_name(self.policy))
        elif not hasattr(self.policy, "select"):  # a namm Policy object (library use) passes as is
            raise UnknownPolicyError(f"policy must be a name from {', '.join(POLICY_NAMES)}, got {self.policy!r}")
        object.__setattr__(self, "budget", Budget.coerce(self.budget))
        try:
            max_new_tokens = operator.index(self.max_new_tokens)
        except TypeError:
            max_new_tokens = 0
        if isinstance(self.max_new_tokens, bool) or max_new_tokens < 1:
            raise RequestError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        object.__setattr__(self, "max_new_tokens", max_new_tokens)
        if isinstance(self.n_up, bool) or not isinstance(self.n_up, int) or self.n_up < 1 \
                or self.n_up % N_UP_MULTIPLE:
            raise RequestError(f"n_up must be a positive multiple of {N_UP_MULTIPLE} (the STFT hop), "
                               f"got {self.n_up!r}")

    def prompts(self) -> tuple[list[str], str | None]:
        """(questions, instruction) as the model sees them: with no question, the instruction
        (or the default summary instruction) becomes the one question."""
        if self.questions:
            return list(self.questions), self.instruction
        return [self.instruction or SUMMARIZE_INSTRUCTION], None
