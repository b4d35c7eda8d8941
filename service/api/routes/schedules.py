"""Schedules: create, list, read, update, delete (tenant-scoped). Beat turns due schedules
into batches (service/repos/schedules.py says when, and why a missed slot runs only once)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Response

from service.api.batch_schemas import (
    SchedulePage,
    ScheduleOut,
    ScheduleRequest,
    ScheduleUpdate,
    schedule_out,
)
from service.api.deps import SessionDep, TenantDep
from service.api.text_checks import check_tree
from service.api.routes.batches import check_source, resolve_options
from service.core.settings import get_settings
from service.repos.schedules import ScheduleError, ScheduleRepository, ScheduleSpec, check_timezone


def get_schedules(session: SessionDep) -> ScheduleRepository:
    return ScheduleRepository(session)


SchedulesDep = Annotated[ScheduleRepository, Depends(get_schedules)]


def schedule_router() -> APIRouter:
    router = APIRouter(prefix="/v1/schedules", tags=["schedules"])

    @router.post("", status_code=201, response_model=ScheduleOut,
                 summary="Create a schedule: a cron expression in a time zone that starts a "
                         "batch of a path or git source")
    def create_route(body: ScheduleRequest, tenant_id: TenantDep,
                     schedules: SchedulesDep) -> ScheduleOut:
        settings = get_settings()
        check_tree(body.model_dump())  # NUL and lone surrogates: 422, as for batches and jobs
        source = body.source.model_dump(exclude_none=True)
        check_source(source, settings)
        options = resolve_options(body, settings)
        try:
            check_timezone(body.timezone)
            row = schedules.create(tenant_id, ScheduleSpec(
                cron=body.cron, timezone=body.timezone, source=source, name=body.name,
                enabled=body.enabled, **options))
        except ScheduleError as exc:
            raise HTTPException(422, str(exc)) from None
        schedules.session.commit()
        return schedule_out(row)

    @router.get("", response_model=SchedulePage, summary="List your schedules")
    def list_route(tenant_id: TenantDep, schedules: SchedulesDep,
                   offset: int = Query(0, ge=0, le=1_000_000),
                   limit: int = Query(50, ge=1, le=1000)) -> SchedulePage:
        limit = min(limit, get_settings().limits.page_size_max)
        rows, total = schedules.page(tenant_id, offset=offset, limit=limit)
        return SchedulePage(items=[schedule_out(r) for r in rows], total=total, offset=offset,
                            limit=limit)

    def load(tenant_id: int, schedule_id: str, schedules: ScheduleRepository):
        row = schedules.get(tenant_id, schedule_id)
        if row is None:
            raise HTTPException(404, "schedule not found")
        return row

    @router.get("/{schedule_id}", response_model=ScheduleOut, summary="One schedule")
    def get_route(schedule_id: str, tenant_id: TenantDep, schedules: SchedulesDep) -> ScheduleOut:
        return schedule_out(load(tenant_id, schedule_id, schedules))

    @router.patch("/{schedule_id}", response_model=ScheduleOut,
                  summary="Change a schedule (only the fields sent)")
    def update_route(schedule_id: str, body: ScheduleUpdate, tenant_id: TenantDep,
                     schedules: SchedulesDep) -> ScheduleOut:
        settings = get_settings()
        check_tree(body.model_dump(exclude_unset=True))
        row = load(tenant_id, schedule_id, schedules)
        changes = {name: getattr(body, name) for name in body.model_fields_set}
        if changes.get("source") is not None:
            changes["source"] = body.source.model_dump(exclude_none=True)
            check_source(changes["source"], settings)
        for name in ("cron", "timezone", "source", "tasks", "questions", "policy",
                     "max_new_tokens", "enabled"):
            if name in changes and changes[name] is None:
                raise HTTPException(422, f"{name} cannot be null")
        if changes.get("policy") is not None:
            from service.api.submission import check_policy_available

            check_policy_available(changes["policy"], settings)
        if "max_new_tokens" in changes and changes["max_new_tokens"] > settings.limits.max_new_tokens:
            raise HTTPException(422, f"max_new_tokens is limited to {settings.limits.max_new_tokens}")
        try:
            if "timezone" in changes:
                check_timezone(changes["timezone"])
            row = schedules.update(row, changes)
        except ScheduleError as exc:
            raise HTTPException(422, str(exc)) from None
        schedules.session.commit()
        return schedule_out(row)

    @router.delete("/{schedule_id}", status_code=204, summary="Delete a schedule (its batches "
                   "stay)")
    def delete_route(schedule_id: str, tenant_id: TenantDep, schedules: SchedulesDep) -> Response:
        schedules.delete(load(tenant_id, schedule_id, schedules))
        schedules.session.commit()
        return Response(status_code=204)

    return router
