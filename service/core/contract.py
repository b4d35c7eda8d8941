"""The library's contract (namm.spec) as pydantic field types, for settings and API schemas.

Validation is namm.spec's own: these types only translate its errors into pydantic's and
describe the accepted forms in the OpenAPI schema. Importing namm.spec does not import torch.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator, WithJsonSchema

from namm.errors import InputError
from namm.spec import BUDGET_FORMS, POLICY_NAMES, Budget, policy_name, shipped_scorer_trained


def _budget(value: Any) -> Budget | None:
    try:
        return Budget.parse(value)
    except InputError as exc:
        raise ValueError(str(exc)) from None


def submittable_policies() -> list[str]:
    """The policy names a request may send, for the schema's enum: `namm` only where an evolved
    scorer ships (otherwise a submission naming it is a 422 that names `surprisal`)."""
    return [name for name in POLICY_NAMES if name != "namm" or shipped_scorer_trained()]


def _policy(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"policy must be a string, one of {', '.join(POLICY_NAMES)}")
    try:
        return policy_name(value)
    except InputError as exc:
        raise ValueError(str(exc)) from None


BUDGET_JSON_SCHEMA: dict[str, Any] = {
    "title": "Budget",
    "description": (
        "KV cache each layer and KV head may keep: " + BUDGET_FORMS + ". A plain number above 1 "
        "is refused as ambiguous. null: the policy's default (the shipped checkpoint's budget "
        "for namm)."),
    "anyOf": [
        {"type": "object", "title": "Fraction", "required": ["fraction"],
         "additionalProperties": False,
         "properties": {"fraction": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}}},
        {"type": "object", "title": "Tokens", "required": ["tokens"], "additionalProperties": False,
         "properties": {"tokens": {"type": "integer", "minimum": 1}}},
        {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "title": "Fraction (shorthand)"},
        {"type": "null"},
    ],
    "examples": [{"fraction": 0.3}, {"tokens": 2048}, 0.3],
}

BudgetField = Annotated[
    Budget | None,
    PlainValidator(_budget),
    PlainSerializer(lambda b: None if b is None else b.to_json()),
    WithJsonSchema(BUDGET_JSON_SCHEMA),
]

PolicyField = Annotated[
    str,
    PlainValidator(_policy),
    WithJsonSchema({"type": "string", "enum": submittable_policies(), "title": "Policy",
                    "description": "memory policy"}),
]
