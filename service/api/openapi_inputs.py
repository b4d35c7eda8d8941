"""What the handlers accept, stated exactly in /openapi.json (issue 23 item 10), so that a
client generated from the document sends only what is accepted (and schemathesis' "schema-
valid request rejected" finds nothing): time zones enumerated, cron expressions as a
pattern, upload media types, the limits of this deployment's settings, the kind of a job
and what it needs, report dates in range; sources in service/api/openapi_sources.py."""

from __future__ import annotations

import copy
import zoneinfo
from functools import lru_cache

from service.api.openapi_sources import exact_sources, walk
from service.api.schemas import SOME_TEXT
from service.core.settings import Settings

COMPONENTS = "#/components/schemas/"
JOBS, BATCHES, REPORT = ("/v1/jobs", "post"), ("/v1/batches", "post"), ("/v1/reports/cost", "get")
DOCUMENTS, QUESTIONS = ("/v1/documents", "post"), ("/v1/documents/{document_id}/questions", "post")
SCHEDULE_MODELS = ("ScheduleRequest", "ScheduleUpdate")
BATCH_QUESTION_CHARS = 2000  # service/api/batch_schemas.py BatchOptions._questions

# "localtime" is this machine's zone file, not an IANA name
NOT_IANA = {"localtime"}

# the media types the handlers read (service/api/documents.py, service/repos/sources.py)
UPLOAD_TYPES = {
    JOBS: ("text/plain, text/markdown, text/html, application/pdf",
           "the document: UTF-8 text (or UTF-16 with a BOM) without NUL and with some "
           "non-whitespace text, as plain text, Markdown or HTML, or a PDF with a text layer"),
    DOCUMENTS: ("text/plain, text/markdown, text/html, application/pdf",
                "the document: UTF-8 text (or UTF-16 with a BOM) without NUL and with some "
                "non-whitespace text, as plain text, Markdown or HTML, or a PDF with a text layer"),
    BATCHES: ("application/gzip, application/x-tar, application/zip",
              "the repository as a .tar.gz, .tar or .zip archive"),
}


def _cron_field(value: str, step: str) -> str:
    return rf"(\*(/{step})?|{value}(,{value})*)"


# 5 fields that croniter reads and that have a next slot (service/repos/schedules.py
# check_cron): values, lists and steps (ranges and names are accepted but not listed); day 30
# or 31 only with every month (February 30 never comes)
MINUTE, HOUR = _cron_field("[1-5]?[0-9]", "([1-9]|[1-5][0-9])"), \
    _cron_field("(1?[0-9]|2[0-3])", "([1-9]|1[0-9]|2[0-3])")
DAY_ANY_MONTH = _cron_field("([1-9]|[12][0-9])", "([1-9]|[12][0-9]|3[01])")
DAY = _cron_field("([1-9]|[12][0-9]|3[01])", "([1-9]|[12][0-9]|3[01])")
MONTH, WEEKDAY = _cron_field("([1-9]|1[0-2])", "([1-9]|1[0-2])"), _cron_field("[0-7]", "[1-7]")
CRON_PATTERN = (rf"^{MINUTE} {HOUR} ({DAY_ANY_MONTH} {MONTH}|{DAY} \*) {WEEKDAY}$")

# a report bound in [1970-01-01, 9000-01-01) UTC whatever its offset or time zone: the years
# 1971 to 8998 (service/reports/cost.py EARLIEST, LATEST)
REPORT_YEAR = r"^(197[1-9]|19[89][0-9]|[2-7][0-9]{3}|8[0-8][0-9]{2}|89[0-8][0-9]|899[0-8])-"


NO_NUL = r"^[^\x00]*$"
IDEMPOTENCY_KEY = r"^[\x20-\x7e]+$"  # printable ASCII
# a form question: some text, and not "[" first (that is read as a JSON list of questions)
FORM_QUESTION = r"^[\s\x1c-\x1f\x85]*[^\s\x1c-\x1f\x85\[]"


@lru_cache(maxsize=1)
def time_zones() -> list[str]:
    return sorted(zoneinfo.available_timezones() - NOT_IANA)


def _operation(schema: dict, key: tuple[str, str]) -> dict:
    path, method = key
    return schema.get("paths", {}).get(path, {}).get(method, {})


def _bodies(schema: dict, key: tuple[str, str]) -> list[dict]:
    """The JSON and form schemas of an operation's request body."""
    content = _operation(schema, key).get("requestBody", {}).get("content", {})
    return [media["schema"] for media in content.values()
            if "properties" in media.get("schema", {})]


def _strings(prop: dict) -> list[dict]:
    """The string options of a property (itself, or the string branches of its anyOf)."""
    return [option for option in prop.get("anyOf", [prop]) if option.get("type") == "string"]


def _integers(prop: dict) -> list[dict]:
    return [option for option in prop.get("anyOf", [prop]) if option.get("type") == "integer"]


def exact_time_zones(schema: dict) -> None:
    components = schema["components"]["schemas"]
    components["TimeZone"] = {"type": "string", "enum": time_zones(), "title": "TimeZone",
                              "description": "an IANA time zone name"}
    zone = {"$ref": COMPONENTS + "TimeZone"}
    for model in SCHEDULE_MODELS:
        props = components.get(model, {}).get("properties", {})
        if "timezone" in props:
            kept = {k: v for k, v in props["timezone"].items() if k in ("default", "examples")}
            props["timezone"] = {**zone, **kept}
    for parameter in _operation(schema, REPORT).get("parameters", []):
        if parameter.get("name") == "tz":
            default = parameter.get("schema", {}).get("default")
            parameter["schema"] = {**zone, **({"default": default} if default else {})}


def exact_report_period(schema: dict) -> None:
    for parameter in _operation(schema, REPORT).get("parameters", []):
        if parameter.get("name") in ("from", "to"):  # a date, a date-time, or empty: default
            parameter["schema"] = {
                "type": "string", "maxLength": 40, "title": parameter["schema"].get("title"),
                "anyOf": [{"maxLength": 0}, {"format": "date", "pattern": REPORT_YEAR},
                          {"format": "date-time", "pattern": REPORT_YEAR}]}


def exact_cron(schema: dict) -> None:
    for model in SCHEDULE_MODELS:
        prop = schema["components"]["schemas"].get(model, {}).get("properties", {}).get("cron")
        for option in _strings(prop or {}):
            option["pattern"] = CRON_PATTERN


def exact_forms(schema: dict) -> None:
    """The upload's media types; no field beside the listed ones (the handlers refuse them)."""
    for key, (media_types, description) in UPLOAD_TYPES.items():
        form = _operation(schema, key).get("requestBody", {}).get("content", {}) \
            .get("multipart/form-data")
        if form is not None:
            form["encoding"] = {"file": {"contentType": media_types}}
            form["schema"]["properties"]["file"]["description"] = description
            form["schema"]["additionalProperties"] = False


def exact_idempotency_key(schema: dict) -> None:
    for key in (JOBS, DOCUMENTS, QUESTIONS):
        for parameter in _operation(schema, key).get("parameters", []):
            if parameter.get("name") == "Idempotency-Key":  # service/api/intake.py idempotency_key
                parameter["schema"]["pattern"] = IDEMPOTENCY_KEY


def _request_schemas(schema: dict) -> list[dict]:
    """Every schema a request is validated against: bodies, parameters and the components
    they refer to (followed through their refs)."""
    roots = []
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict):
                continue
            roots += [p["schema"] for p in operation.get("parameters", []) if "schema" in p]
            roots += [m["schema"] for m in
                      operation.get("requestBody", {}).get("content", {}).values() if "schema" in m]
    components = schema.get("components", {}).get("schemas", {})
    seen: set[str] = set()
    found, todo = [], list(roots)
    while todo:
        node = todo.pop()
        found.append(node)
        for item in walk(node):
            ref = item.get("$ref", "")
            name = ref.removeprefix(COMPONENTS)
            if ref.startswith(COMPONENTS) and name not in seen and name in components:
                seen.add(name)
                todo.append(components[name])
    return found


def no_nul_in_text(schema: dict) -> None:
    """No text field of a request may hold NUL (service/api/text_checks.py: no database stores
    it); the rule is added beside a field's own pattern."""
    done: set[int] = set()
    for root in _request_schemas(schema):
        for node in walk(root):
            if id(node) in done or node.get("type") != "string" or "enum" in node \
                    or "const" in node or node.get("format") == "binary":
                continue
            done.add(id(node))
            if "pattern" in node:
                node["allOf"] = node.get("allOf", []) + [{"pattern": NO_NUL}]
            else:
                node["pattern"] = NO_NUL


def _limit_options(body: dict, settings: Settings, question_chars: int) -> None:
    """Questions, instruction, file name and max_new_tokens as the handlers bound them."""
    props = body["properties"]
    limits = settings.limits
    questions = props.get("questions")
    if questions is not None:
        for option in [q for q in questions.get("anyOf", [questions]) if q.get("type") == "array"]:
            option["maxItems"] = limits.max_questions
            # a question is stripped, then must not be empty
            option["items"] = {**option.get("items", {}), "type": "string", "pattern": SOME_TEXT,
                               "minLength": 1, "maxLength": question_chars}
    for name, most in (("instruction", limits.max_instruction_chars),
                       ("filename", limits.max_filename_chars)):
        for option in _strings(props.get(name, {})):
            option["maxLength"] = most
    for option in _integers(props.get("max_new_tokens", {})):
        option["maximum"] = limits.max_new_tokens


# what a job's kind needs (service/api/submission.py _new_job): an answer needs a question, an
# extraction an instruction with some text, a summary takes no question
KIND_RULES = [
    {"if": {"required": ["kind"], "properties": {"kind": {"const": "answer"}}},
     "then": {"required": ["questions"], "properties": {"questions": {"minItems": 1}}}},
    {"if": {"required": ["kind"], "properties": {"kind": {"const": "extract"}}},
     "then": {"required": ["instruction"],
              "properties": {"instruction": {"type": "string", "pattern": SOME_TEXT}}}},
    {"if": {"required": ["kind"], "properties": {"kind": {"const": "summarize"}}},
     "then": {"properties": {"questions": {"maxItems": 0}}}},
]


def exact_options(schema: dict, settings: Settings) -> None:
    for body in _bodies(schema, JOBS) + _bodies(schema, DOCUMENTS) + _bodies(schema, QUESTIONS):
        _limit_options(body, settings, settings.limits.max_question_chars)
    for body in _bodies(schema, JOBS):
        body["allOf"] = body.get("allOf", []) + copy.deepcopy(KIND_RULES)
    batch_bodies = _bodies(schema, BATCHES) + [
        schema["components"]["schemas"][m] for m in SCHEDULE_MODELS
        if m in schema["components"]["schemas"]]
    for body in batch_bodies:
        _limit_options(body, settings, BATCH_QUESTION_CHARS)
    for key in (JOBS, BATCHES):  # a form question that starts with "[" is read as a JSON list
        content = _operation(schema, key).get("requestBody", {}).get("content", {})
        form = content.get("multipart/form-data", {}).get("schema", {}).get("properties", {})
        if "questions" in form:  # a copy: the form shares its fields' schemas with the JSON
            question = form["questions"]
            form["questions"] = {**question, "items": {**question["items"],
                                                       "pattern": FORM_QUESTION}}


def hoist_local_defs(schema: dict) -> None:
    """Inline JSON schemas (a route's openapi_extra) carry pydantic's `$defs`, which the
    document cannot resolve: their models go to the components and the refs follow."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for node in list(walk(schema.get("paths", {}))):
        for name, definition in node.pop("$defs", {}).items():
            components.setdefault(name, definition)
    for node in walk(schema):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            node["$ref"] = COMPONENTS + ref.removeprefix("#/$defs/")
        mapping = node.get("discriminator", {}).get("mapping", {})
        for kind, target in mapping.items():
            if isinstance(target, str) and target.startswith("#/$defs/"):
                mapping[kind] = COMPONENTS + target.removeprefix("#/$defs/")


def exact_inputs(schema: dict, settings: Settings) -> dict:
    hoist_local_defs(schema)
    exact_sources(schema, settings.batches)
    exact_time_zones(schema)
    exact_report_period(schema)
    exact_cron(schema)
    exact_forms(schema)
    exact_idempotency_key(schema)
    exact_options(schema, settings)
    no_nul_in_text(schema)
    return schema
