"""Cost-reduction reports: GET /v1/reports/cost (JSON or CSV). A tenant key sees its own
tenant; an admin key (api_keys.is_admin) sees every tenant, may pick one (`tenant`) and may
group by tenant. Bad parameters are a 422 with a message; the period is bounded."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, Query, Response

from sqlalchemy import select

from service.api.deps import SessionDep
from service.api.principal import PrincipalDep
from service.models import Batch
from service.reports.cost import MAX_DAYS, ReportError, build_report, parse_query, report_csv

GroupByParam = Literal["day", "model", "policy", "batch", "tenant"]


DAY_OR_TIME = {"anyOf": [{"format": "date"}, {"format": "date-time"}]}

def report_router() -> APIRouter:
    router = APIRouter(prefix="/v1/reports", tags=["reports"])

    @router.get(
        "/cost", summary="Cost, savings and work of finished jobs, grouped",
        description=(
            "Totals and savings in tokens, KV token-steps, KV bytes, seconds and micro-dollars "
            "over the finished jobs of a period, grouped by day (in `tz`), model, policy, batch "
            "or tenant (admin keys). Savings are summed over jobs with a counterfactual only; "
            "`saved_estimated` is true when any of them is an estimate, and a negative saving "
            f"is a loss. `from`/`to`: YYYY-MM-DD (whole days in `tz`, `to` included) or ISO "
            "datetimes, `from` before `to`; default the last 30 days (or from `from` to "
            f"today); at most {MAX_DAYS} days (a 422 otherwise: a rule between parameters, "
            "which the parameters' schemas cannot state)."),
        responses={200: {"description": "the report: JSON, or CSV with format=csv",
                         "content": {"application/json": {"schema": {"type": "object"}},
                                     "text/csv": {"schema": {"type": "string"}}}},
                   403: {"description": "tenant figures need an admin key"},
                   404: {"description": "no such batch for this key"},
                   422: {"description": "bad period, time zone or grouping"}})
    def cost_report(
        principal: PrincipalDep,
        session: SessionDep,
        # a date or an ISO datetime, stated so that clients (and schemathesis) send one
        from_: str | None = Query(None, alias="from", max_length=40, json_schema_extra=DAY_OR_TIME),
        to: str | None = Query(None, max_length=40, json_schema_extra=DAY_OR_TIME),
        group_by: GroupByParam = Query("day"),
        tz: str = Query("UTC", max_length=64, description="IANA time zone for days"),
        format: Literal["json", "csv"] = Query("json"),
        tenant: int | None = Query(None, ge=1, description="admin keys: this tenant only"),
        batch: str | None = Query(None, max_length=36, description="one repository batch only"),
        with_status: bool = Query(False, description="add jobs per day by status"),
    ):
        if not principal.is_admin:
            if group_by == "tenant":
                raise HTTPException(403, "group_by=tenant needs an admin key")
            if tenant is not None and tenant != principal.tenant_id:
                raise HTTPException(403, "another tenant's figures need an admin key")
            tenant = principal.tenant_id
        if batch is not None and not _batch_visible(session, batch, tenant):
            # another tenant's batch id answers as an unknown one: its existence is not disclosed
            raise HTTPException(404, "batch not found")
        try:
            query = parse_query(from_=from_, to=to, group_by=group_by, tz=tz, tenant_id=tenant,
                                batch_id=batch)
        except ReportError as exc:
            raise HTTPException(422, str(exc)) from None
        report = build_report(session, query, with_status=with_status)
        if format == "csv":
            return Response(report_csv(report), media_type="text/csv; charset=utf-8",
                            headers={"Content-Disposition":
                                     f'attachment; filename="cost-by-{group_by}.csv"'})
        return report

    return router


def _batch_visible(session, batch_id: str, tenant_id: int | None) -> bool:
    """Whether the batch exists for `tenant_id` (None: an admin over every tenant)."""
    where = [Batch.id == batch_id]
    if tenant_id is not None:
        where.append(Batch.tenant_id == tenant_id)
    return session.scalar(select(Batch.id).where(*where)) is not None
