"""Checks of the Alembic migrations shared by the SQLite (unit) and PostgreSQL (integration)
tests: the schema round trip, the budget-unit migration (0002) converting existing rows, and
the shipped memory's rename (0007) keeping accepted work runnable."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from namm.spec import Budget
from service.core.migrate import downgrade, upgrade
from service.models import Base

TABLES = {"tenants", "api_keys", "documents", "jobs", "results", "usage_records", "batches",
          "batch_files", "batch_skipped_files", "batch_uploads", "schedules", "stored_documents"}
# budgets as revision 0001 stored them (one float) -> what 0002 makes of them
OLD_BUDGETS = {"fraction": 0.5, "keep-all": 1.0, "tokens": 512.0, "none": None}
CONVERTED = {"fraction": Budget.fraction(0.5), "keep-all": Budget.fraction(1.0),
             "tokens": Budget.tokens(512), "none": None}


def check_round_trip(url: str) -> None:
    engine = create_engine(url)
    try:
        upgrade(url)
        assert TABLES <= set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], f"models and migrations differ: {diff}"
        downgrade(url)
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(url)
        assert TABLES <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _tenant_and_document(conn) -> None:
    """Tenant 1 and document 'd', the rows a job needs (columns every revision has)."""
    conn.execute(text("INSERT INTO tenants (id, name, created_at) "
                      "VALUES (1, 't', CURRENT_TIMESTAMP)"))
    conn.execute(text("INSERT INTO documents (id, tenant_id, content_type, size_bytes, "
                      "sha256, text, created_at) VALUES ('d', 1, 'text/plain', 1, 'x', "
                      "'x', CURRENT_TIMESTAMP)"))


def check_budget_migration(url: str) -> None:
    """Rows written at 0001 get their unit at 0002, and go back to one number on downgrade."""
    engine = create_engine(url)
    try:
        upgrade(url, "0001")
        with engine.begin() as conn:
            _tenant_and_document(conn)
            for name, budget in OLD_BUDGETS.items():
                conn.execute(text(
                    "INSERT INTO jobs (id, tenant_id, document_id, status, progress, attempts, "
                    "max_attempts, kind, questions, policy, budget, max_new_tokens, truncate, "
                    "created_at) VALUES (:id, 1, 'd', 'done', 1.0, 1, 3, 'summarize', '[]', "
                    "'h2o', :budget, 8, false, CURRENT_TIMESTAMP)"), {"id": name, "budget": budget})
                conn.execute(text(
                    "INSERT INTO usage_records (job_id, tenant_id, model, policy, budget, tokens_in, "
                    "tokens_out, kv_kept_fraction, kv_bytes_peak, kv_bytes_full_peak, seconds, "
                    "cost_micro_usd, full_cache_cost_micro_usd, created_at) VALUES (:id, 1, 'm', "
                    "'h2o', :budget, 1, 1, 0.5, 1, 2, 1.0, 1, 2, CURRENT_TIMESTAMP)"),
                    {"id": name, "budget": budget})
        upgrade(url)
        with engine.connect() as conn:
            for table, key in (("jobs", "id"), ("usage_records", "job_id")):
                rows = conn.execute(text(f"SELECT {key}, budget_unit, budget_value FROM {table}"))
                got = {row[0]: None if row[1] is None else Budget(row[1], row[2]) for row in rows}
                assert got == CONVERTED, (table, got)
        downgrade(url, "0001")
        with engine.connect() as conn:
            got = dict(conn.execute(text("SELECT id, budget FROM jobs")).all())
        assert got == OLD_BUDGETS
        downgrade(url)
    finally:
        engine.dispose()


def check_shipped_memory_rename(url: str) -> None:
    """At 0007, unfinished jobs and batches and every schedule stored with `namm` (the shipped
    surprisal memory) run as `surprisal`; finished rows keep the name they ran under."""
    engine = create_engine(url)
    try:
        upgrade(url, "0006")
        with engine.begin() as conn:
            _tenant_and_document(conn)
            for job, status, policy in (("q", "queued", "namm"), ("w", "waiting", "namm"),
                                        ("r", "running", "namm"), ("d", "done", "namm"),
                                        ("h", "queued", "h2o")):
                conn.execute(text(
                    "INSERT INTO jobs (id, tenant_id, document_id, status, progress, attempts, "
                    "max_attempts, kind, questions, policy, max_new_tokens, truncate, "
                    "created_at) VALUES (:id, 1, 'd', :status, 0.0, 0, 3, 'summarize', '[]', "
                    ":policy, 8, false, CURRENT_TIMESTAMP)"),
                    {"id": job, "status": status, "policy": policy})
            conn.execute(text(
                "INSERT INTO schedules (id, tenant_id, cron, timezone, source, tasks, questions, "
                "policy, max_new_tokens, enabled, created_at, updated_at) VALUES ('s', 1, "
                "'0 2 * * *', 'UTC', '{}', '[]', '[]', 'namm', 8, true, CURRENT_TIMESTAMP, "
                "CURRENT_TIMESTAMP)"))
        upgrade(url)
        with engine.connect() as conn:
            jobs = dict(conn.execute(text("SELECT id, policy FROM jobs")).all())
            schedule = conn.execute(text("SELECT policy FROM schedules")).scalar()
        assert jobs == {"q": "surprisal", "w": "surprisal", "r": "surprisal", "d": "namm",
                        "h": "h2o"}
        assert schedule == "surprisal"
        downgrade(url, "0006")
        with engine.connect() as conn:
            jobs = dict(conn.execute(text("SELECT id, policy FROM jobs")).all())
        assert jobs["q"] == "namm" and jobs["d"] == "namm"
        downgrade(url)
    finally:
        engine.dispose()
