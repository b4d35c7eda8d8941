"""Shadow runs (service/jobs/shadow.py): the full-cache rerun of a sampled job, on the `gpu`
queue at the lowest priority, measured and stored apart from the job (never billed)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import select

from namm.errors import InputError
from namm.spec import GenerationRequest
from service.core.db import session_scope
from service.core.queue import GPU_QUEUE, celery_app
from service.core.settings import get_settings
from service.models import DONE, FAILED, Job, Result, UsageRecord, utcnow
from service.jobs.pricing import job_cost
from service.jobs.shadow import answers_agree, claim, draw_shadow, finish
from service.jobs.usage import work_from_output
from workers.celery_app import app
from workers.runner import reads_question_first

logger = logging.getLogger(__name__)

SHADOW_RUN = "namm.shadow_run"
LOWEST_PRIORITY = 9  # Redis: 0 is served first, 9 last (kombu priority steps 0, 3, 6, 9)


def schedule_shadow(job_id: str) -> bool:
    """After a job is stored as done: draw it at its tenant's rate and queue the rerun."""
    try:
        with session_scope() as session:
            sampled = draw_shadow(session, job_id)
        if sampled:
            celery_app().send_task(SHADOW_RUN, args=[job_id], queue=GPU_QUEUE,
                                   priority=LOWEST_PRIORITY)
        return sampled
    except Exception:  # a measurement, never a reason to fail the job it measures
        logger.warning("could not schedule a shadow run for job %s", job_id, exc_info=True)
        return False


def run_shadow(job_id: str, *, load_model: Callable | None = None,
               generate: Callable | None = None) -> str:
    settings = get_settings()
    with session_scope() as session:
        if not claim(session, job_id):
            return "skipped"
        job = session.get(Job, job_id)
        usage = session.scalar(select(UsageRecord).where(UsageRecord.job_id == job_id))
        result = session.scalar(select(Result).where(Result.job_id == job_id))
        request = GenerationRequest(  # the full cache, reading as the job read (workers/runner.py)
            context=job.document.text, questions=tuple(job.questions), instruction=job.instruction,
            policy="full", budget=None, max_new_tokens=job.max_new_tokens, n_up=settings.model.n_up,
            truncate=job.truncate, query_aware=reads_question_first(job.questions, settings.model))
        answers = list(result.answers) if result is not None else []
        run = {"seconds": usage.seconds_prefill + usage.seconds_decode + usage.seconds_policy,
               "cost": usage.cost_micro_usd, "steps": usage.kv_token_steps}
    if load_model is None or generate is None:
        from namm import generate
        from workers.model import get_model as load_model
    try:
        lm = load_model()
        output = generate(lm, request).to_dict()
    except InputError as exc:  # e.g. the full cache cannot read a document past the context
        return _finish(job_id, status=FAILED, error=f"{type(exc).__name__}: {exc}")
    except Exception as exc:
        logger.exception("shadow run of job %s crashed", job_id)
        return _finish(job_id, status=FAILED, error=f"internal error ({type(exc).__name__})")
    from workers.runner import device_name

    output["device"] = device_name(lm)
    work = work_from_output(output)
    full = job_cost(settings.prices, policy="full", model=getattr(lm, "name", None) or "unknown",
                    device=output["device"], finished_at=utcnow(), work=work)
    return _finish(
        job_id, status=DONE, seconds_run=run["seconds"],
        seconds_full=work.seconds_prefill + work.seconds_decode, cost_run_micro_usd=run["cost"],
        cost_full_micro_usd=full.cost_micro_usd, kv_token_steps_run=run["steps"],
        kv_token_steps_full=work.kv_token_steps, answers_full=list(output["answers"]),
        answers_agree=answers_agree(answers, list(output["answers"])))


def _finish(job_id: str, status: str, **measured) -> str:
    with session_scope() as session:
        finish(session, job_id, status, **measured)
    return status


@app.task(name=SHADOW_RUN, ignore_result=True)
def shadow_run(job_id: str) -> str:
    return run_shadow(job_id)
