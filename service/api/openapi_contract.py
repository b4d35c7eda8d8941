"""The answers every operation can give, declared once in the OpenAPI document (issue 23
item 10): schemathesis found 401/404/422/429 answered but undocumented on most routes, and
/metrics declared with a required key header while it is open. Routes declare what is theirs;
this adds, to every operation, the error answers that come from shared code (the key check,
tenancy, validation, quotas, the database handler), all with the `{"detail": ...}` body."""

from __future__ import annotations

import re
from collections.abc import Callable

from fastapi import FastAPI

from service.api.openapi_inputs import exact_inputs
from service.core.contract import submittable_policies
from service.core.settings import Settings

ERROR_BODY = {"type": "object", "required": ["detail"],
              "properties": {"detail": {"description": "what was wrong, for a person to read"}}}
# a 422 comes from FastAPI's validation (a list of errors) or from a handler's own check (a
# sentence): both are declared, so that neither violates the schema
UNPROCESSABLE = {"description": "invalid parameters or body", "content": {"application/json": {
    "schema": {"type": "object", "required": ["detail"], "properties": {"detail": {"anyOf": [
        {"type": "string"},
        {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}}]}}}}}}
# operations that never ask for a key (the rest answer 401 without one)
OPEN_PATHS = {"/health", "/openapi.json"}
# /metrics asks for the operator key only when NAMM_API__METRICS_KEY is set
METRICS_PATH = "/metrics"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# LitServe's own routes answer plain text ("litserve running", "ok")
PLAIN_TEXT_PATHS = {"/", "/health/workers"}


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": ERROR_BODY}}}


def shared_responses(path: str, method: str) -> dict[str, dict]:
    """The error answers an operation gets from shared code, by status code."""
    answers = {"422": UNPROCESSABLE,
               "503": _error("database unavailable, or the API is stopping; retry")}
    if path not in OPEN_PATHS and path != METRICS_PATH:
        answers["401"] = _error("missing, wrong or revoked X-API-Key")
        answers["429"] = _error("tenant quota or rate reached (see Retry-After)")
    if path.startswith("/v1/admin"):
        answers["403"] = _error("an admin key is required")
    if "{" in path or path.startswith("/v1/"):  # another tenant's id answers as unknown
        answers["404"] = _error("unknown id (or another tenant's)")
    return answers


# what the form handlers accept in their text fields, stated (a budget is a fraction in (0, 1]
# or a JSON budget object; a batch's tasks must include summaries)
FRACTION = r"(0?\.[0-9]*[1-9][0-9]*|1(\.0*)?)"
FORM_PATTERNS = {
    "budget": (rf'^({FRACTION}|\{{ ?"fraction": ?{FRACTION} ?\}}|\{{ ?"tokens": ?[1-9][0-9]{{0,5}} ?\}})$'),
    "tasks": "^(summaries|summaries,overview|overview,summaries)$",
}


def form_field(name: str, schema: dict) -> dict:
    """A form field as a form can carry it: never null (a form omits a field instead: "null"
    would be text) and never empty (an empty field is refused, not taken as absent)."""
    options = [s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"]
    field = dict(options[0]) if len(options) == 1 else {**schema, "anyOf": options}
    for key in ("title", "description", "default"):
        if key in schema:
            field[key] = schema[key]
    if field.get("type") == "string" and field.get("format") != "binary":
        field["minLength"] = max(1, field.get("minLength", 0))
        if name in FORM_PATTERNS:
            field["pattern"] = FORM_PATTERNS[name]
    if field.get("type") == "array":  # an empty question is refused
        field["items"] = {**field.get("items", {}), "minLength": 1}
    if name == "policy":  # the same names as the JSON body's policy
        field["enum"] = submittable_policies()
    if name == "max_new_tokens":
        field["minimum"] = max(1, field.get("minimum", 1))
    return field


def complete_forms(operation: dict) -> None:
    form = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
    if form and "properties" in form.get("schema", {}):
        props = form["schema"]["properties"]
        for name, schema in props.items():
            props[name] = form_field(name, schema)


def complete_contract(schema: dict, metrics_key_set: bool,
                      settings: Settings | None = None) -> dict:
    """Add the shared answers to every operation (what a route declares itself is kept), and
    state exactly what the inputs may be (service/api/openapi_inputs.py)."""
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for code, answer in shared_responses(path, method).items():
                operation["responses"].setdefault(code, answer)
            operation["responses"]["422"] = UNPROCESSABLE
            if "requestBody" in operation:  # Starlette's answer to a body it cannot parse
                operation["responses"].setdefault("400", _error("unreadable body"))
            complete_forms(operation)
            if path in PLAIN_TEXT_PATHS:
                operation["responses"]["200"] = {
                    "description": "plain text", "content": {"text/plain": {"schema": {"type": "string"}}}}
            if path == METRICS_PATH:
                operation["responses"]["200"] = {
                    "description": "Prometheus text exposition",
                    "content": {"text/plain": {"schema": {"type": "string"}}}}
                if metrics_key_set:
                    operation["responses"]["401"] = _error("missing or wrong operator key")
                else:  # open: no key is asked for, so none is declared
                    operation.pop("security", None)
                    operation["parameters"] = [p for p in operation.get("parameters", [])
                                               if p.get("name") != "X-API-Key"]
    return exact_inputs(schema, settings or Settings())


class ResponseContractMiddleware:
    """Answers as the document says: a 405's Allow lists every method the document gives the
    path (Starlette names only those of the first route that matched, and GET and POST of one
    path are two routes here); LitServe's plain-text answers get their Content-Type."""

    def __init__(self, app, schema: Callable[[], dict]):
        self.app, self.schema, self._allow = app, schema, None

    def allowed(self, path: str) -> str | None:
        if self._allow is None:  # path templates -> methods, built once from the document
            self._allow = [(re.compile("^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(p)) + "$"),
                            ", ".join(sorted(m.upper() for m in item if m in HTTP_METHODS)))
                           for p, item in self.schema().get("paths", {}).items()]
        return next((methods for regex, methods in self._allow if regex.match(path)), None)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_as_documented(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                allow = self.allowed(scope["path"]) if message["status"] == 405 else None
                if allow is not None:
                    headers = [(k, v) for k, v in headers if k.lower() != b"allow"]
                    headers.append((b"allow", allow.encode()))
                if scope["path"] in PLAIN_TEXT_PATHS and b"content-type" not in names:
                    headers.append((b"content-type", b"text/plain; charset=utf-8"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_as_documented)


def install_contract(app: FastAPI, metrics_key_set: Callable[[], bool],
                     settings: Callable[[], Settings] = Settings) -> None:
    """Wrap app.openapi so that /openapi.json carries the shared answers and the inputs this
    deployment accepts, and make a 405's Allow header exact."""
    app.add_middleware(ResponseContractMiddleware, schema=lambda: app.openapi())
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = complete_contract(build(), metrics_key_set(), settings())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
