"""Store a batch of submissions so that one bad item never fails another (issue 13).

LitServe hands the inference worker several submissions at once (service/api/app.py). They
used to be stored in one transaction, so one row the database refused (a NUL on PostgreSQL,
a lone surrogate on SQLite) failed every valid submission of its batch with a 500 or 503.
Now:
- everything a database would refuse is caught before (service/api/text_checks.py, limits in
  service/api/submission.py), each item answering its own 4xx;
- the batch is still stored in one transaction (the fast path), but if that transaction fails
  on its data rather than on the database being unreachable, each item is stored again in a
  transaction of its own: the guilty one gets its own error, the others their 202;
- a submission with an Idempotency-Key is stored alone, with its key, in one transaction
  (service/jobs/idempotency.py): a retry answers the first job, another body a 409;
- a new job over its tenant's quota (service/jobs/quotas.py) is a 429 with Retry-After; the
  quota is counted in the transaction that stores the jobs, under the tenant's quota lock.
Only a database that cannot be reached answers 503 for the whole batch.

Before any of that, `admit` authenticates the batch: a small submission reaches the inference
worker with its key's sha256 rather than a tenant (service/api/auth.py), and one query finds
the tenants of all of them. An unknown or revoked key is a 401 before its body is validated.
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from sqlalchemy.exc import DisconnectionError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from service.core.settings import Settings
from service.jobs.repository import NewJob

logger = logging.getLogger(__name__)

JOBS_PATH = "/v1/jobs"
UNAVAILABLE = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)
IDEMPOTENCY_HEADER = "idempotency-key"
MAX_KEY_CHARS = 255


class Refusal(dict):
    """A submission refused in the inference worker. Returned, not raised: in a batch, an
    exception would fail every request of the batch. SubmissionHandler turns it into the
    HTTP error it describes."""

    @classmethod
    def of(cls, exc: HTTPException) -> Refusal:
        return cls(error={"status_code": exc.status_code, "detail": exc.detail,
                          **({"headers": exc.headers} if exc.headers else {})})

    @classmethod
    def status(cls, status_code: int, detail: str) -> Refusal:
        return cls(error={"status_code": status_code, "detail": detail})


@dataclass
class Submission:
    job: NewJob
    idempotency_key: str | None = None
    request_sha256: str | None = None


def idempotency_key(payload: dict[str, Any]) -> str | None:
    key = payload.get("idempotency_key")
    if key is None:
        return None
    if not key or len(key) > MAX_KEY_CHARS or not key.isascii() or not key.isprintable():
        raise HTTPException(422, f"Idempotency-Key: 1 to {MAX_KEY_CHARS} printable ASCII "
                                 "characters (a UUID is a good key)")
    return key


def request_sha256(payload: dict[str, Any]) -> str:
    """The request a key was used with, independent of JSON spacing and key order or of the
    order of form fields."""
    digest = hashlib.sha256()
    if payload["format"] == "json":
        canonical = json.dumps(json.loads(payload["body"]), sort_keys=True, ensure_ascii=True,
                               separators=(",", ":"))
        digest.update(b"json\0" + canonical.encode())
    else:
        fields = sorted(payload["fields"].items())  # field order is free, value order is not
        digest.update(b"form\0" + json.dumps(fields, ensure_ascii=True).encode())
        upload = payload.get("file")
        if upload is not None:
            digest.update(json.dumps([upload["filename"], upload["content_type"]],
                                     ensure_ascii=True).encode())
            digest.update(hashlib.sha256(upload["data"]).digest())
    return digest.hexdigest()


def decode(payload: dict[str, Any], settings: Settings) -> Submission | Refusal:
    """Validate one submission (service/api/submission.py) in the inference worker."""
    from service.api.submission import parse_submission

    try:
        key = idempotency_key(payload)
        job = parse_submission(payload, settings)
        return Submission(job, key, request_sha256(payload) if key else None)
    except HTTPException as exc:
        return Refusal.of(exc)
    except RecursionError:  # json.loads and the checks recurse: thousands of nested [ or {
        return Refusal.status(400, "the JSON body nests too deeply")
    except Exception:  # a bug here is ours: a 500 for this request alone, never a 4xx
        logger.exception("could not parse a submission")
        return Refusal.status(500, "internal error; see the API log")


def authenticate(payloads: list[dict[str, Any]]) -> list[dict[str, Any] | Refusal]:
    """Each payload with its tenant, or a Refusal (401: unknown or revoked key; 503: no
    database). One query for every key the API process left to this batch."""
    from service.api.auth import INVALID_KEY
    from service.api.keys import tenants_for_key_hashes
    from service.core.db import session_scope

    digests = [p["key_sha256"] for p in payloads if p.get("tenant_id") is None]
    if not digests:
        return list(payloads)
    try:
        with session_scope() as session:
            tenants = tenants_for_key_hashes(session, digests)
    except UNAVAILABLE as exc:
        logger.error("could not check API keys: %s", type(exc).__name__)
        tenants = None
    out: list[dict[str, Any] | Refusal] = []
    for payload in payloads:
        if payload.get("tenant_id") is not None:
            out.append(payload)
        elif tenants is None:
            out.append(_unavailable())
        elif payload["key_sha256"] in tenants:
            out.append({**payload, "tenant_id": tenants[payload["key_sha256"]]})
        else:
            out.append(Refusal.of(INVALID_KEY))
    return out


def admit(payloads: list[dict[str, Any]], settings: Settings) -> list[dict]:
    """The answer to each submission of a batch: authenticated, validated, stored, enqueued."""
    return store([item if isinstance(item, Refusal) else decode(item, settings)
                  for item in authenticate(payloads)], settings)


def _accepted(job_id: str, status: str = "queued") -> dict:
    return {"id": job_id, "status": status, "url": f"{JOBS_PATH}/{job_id}"}


def _unavailable() -> Refusal:
    return Refusal.status(503, "the database is unavailable; retry shortly")


def _refused_by_database(exc: Exception) -> Refusal:
    # the checks before should have caught whatever the database refuses; if one did not, the
    # item still answers alone (422: its data), and the log says which check is missing
    logger.error("the database refused a submission: %s: %s", type(exc).__name__,
                 str(exc).splitlines()[0][:200] if str(exc) else "")
    return Refusal.status(422, f"the database refused this submission's data "
                               f"({type(exc).__name__}); check its text fields")


def _locked_gate(session, settings: Settings):
    """A quota gate counting in `session`, the one that stores the jobs, under each tenant's
    quota lock: a release of waiting jobs or another submission cannot fill the same slot."""
    from service.jobs.quotas import QuotaGate

    return QuotaGate(lambda: nullcontext(session), settings.quotas, lock=True)


def _create(items: list[Submission], settings: Settings) -> list[dict]:
    """Each item's answer: stored (its quota counted in the same transaction) or a 429."""
    from service.core.db import session_scope
    from service.jobs.repository import JobRepository

    with session_scope() as session:
        gate = _locked_gate(session, settings)
        gate.load(item.job.tenant_id for item in items)
        overs = [gate.admit(item.job.tenant_id) for item in items]
        ids = iter(JobRepository(session).create(
            [item.job for item, over in zip(items, overs) if over is None]))
        return [_accepted(next(ids)) if over is None else _over_quota(over) for over in overs]


def _store_plain(items: list[Submission], settings: Settings) -> list[dict]:
    """One transaction for all; on a data error, one transaction per item."""
    if not items:
        return []
    try:
        return _create(items, settings)
    except UNAVAILABLE as exc:
        logger.error("could not store jobs: %s", type(exc).__name__)
        return [_unavailable() for _ in items]
    except Exception as exc:
        logger.warning("a batch of %d submissions failed (%s); storing each alone", len(items),
                       type(exc).__name__)
    out: list[dict] = []
    for item in items:
        try:
            out += _create([item], settings)
        except UNAVAILABLE:
            out.append(_unavailable())
        except Exception as exc:
            out.append(_refused_by_database(exc))
    return out


def _over_quota(over) -> Refusal:
    return Refusal.of(HTTPException(429, over.message,
                                    headers={"Retry-After": str(over.retry_after_s)}))


def _store_keyed(item: Submission, settings: Settings) -> tuple[dict, bool]:
    """(answer, new job?) for a submission with an Idempotency-Key."""
    from service.core.db import session_scope
    from service.jobs import idempotency
    from service.jobs.repository import JobRepository

    assert item.idempotency_key and item.request_sha256
    ttl = settings.api.idempotency_ttl_s
    tenant = item.job.tenant_id
    for _attempt in range(2):  # a lost race is answered by reading the winner's row
        try:
            with session_scope() as session:
                earlier = idempotency.find(session, tenant, item.idempotency_key,
                                           item.request_sha256, ttl)
                if earlier is not None:
                    if not earlier.same_request:
                        return Refusal.status(409, "Idempotency-Key already used with another "
                                                   "request; use a new key for a new job"), False
                    return _accepted(earlier.job_id, earlier.status), False
                over = _locked_gate(session, settings).admit(tenant)
                if over is not None:
                    return _over_quota(over), False
                job_id = JobRepository(session).create([item.job])[0]
                idempotency.remember(session, tenant, item.idempotency_key,
                                     item.request_sha256, job_id)
            return _accepted(job_id), True
        except IntegrityError:
            continue  # a concurrent first use committed the key: read it
        except UNAVAILABLE:
            return _unavailable(), False
        except Exception as exc:
            return _refused_by_database(exc), False
    return Refusal.status(409, "Idempotency-Key is being used by a concurrent request; retry"), False


def store(items: list[Submission | Refusal], settings: Settings) -> list[dict]:
    """The answer to each item, in order; new jobs are enqueued after their commit."""
    from service.api.metrics import ENQUEUE_FAILURES, JOBS_SUBMITTED
    from service.core.queue import enqueue_jobs

    answers: list[dict | None] = [item if isinstance(item, Refusal) else None for item in items]
    plain = [i for i, item in enumerate(items)
             if isinstance(item, Submission) and item.idempotency_key is None]
    new_ids: list[str] = []
    stored = _store_plain([items[i] for i in plain], settings)  # type: ignore[misc]
    for i, answer in zip(plain, stored):
        answers[i] = answer
        if not isinstance(answer, Refusal):
            new_ids.append(answer["id"])
    for i, item in enumerate(items):
        if isinstance(item, Submission) and item.idempotency_key is not None:
            answer, created = _store_keyed(item, settings)
            answers[i] = answer
            if created:
                new_ids.append(answer["id"])
    # only after the commits: a worker must find the row when the message arrives
    JOBS_SUBMITTED.inc(len(new_ids))
    failed = len(new_ids) - enqueue_jobs(new_ids)
    if failed:
        ENQUEUE_FAILURES.inc(failed)
    return answers  # type: ignore[return-value]
