"""Checks of migration 0004 (usage records, prices, admin keys) shared by the SQLite (unit) and
PostgreSQL (integration) tests: rows written before it are converted, and back on downgrade."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from service.core.migrate import downgrade, upgrade


def check_usage_migration(url: str) -> None:
    engine = create_engine(url)
    try:
        upgrade(url, "0003")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO tenants (id, name, created_at) "
                              "VALUES (1, 't', CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO api_keys (id, tenant_id, key_hash, prefix, created_at) "
                              "VALUES (1, 1, 'h', 'p', CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO documents (id, tenant_id, content_type, size_bytes, "
                              "sha256, text, created_at) VALUES ('d', 1, 'text/plain', 1, 'x', "
                              "'x', CURRENT_TIMESTAMP)"))
            for job, policy, unit, value in (("n", "namm", "fraction", 0.3),
                                             ("f", "full", "fraction", 0.5)):
                conn.execute(text(
                    "INSERT INTO jobs (id, tenant_id, document_id, status, progress, attempts, "
                    "max_attempts, kind, questions, policy, budget_unit, budget_value, "
                    "max_new_tokens, truncate, created_at) VALUES (:id, 1, 'd', 'done', 1.0, 1, "
                    "3, 'summarize', '[]', :policy, :unit, :value, 8, false, CURRENT_TIMESTAMP)"),
                    {"id": job, "policy": policy, "unit": unit, "value": value})
                # the figures of the issue: NAMM 'saved' 132,293 of a 195,093 counterfactual
                # that scaled its own seconds; full carried a budget it never used
                conn.execute(text(
                    "INSERT INTO usage_records (job_id, tenant_id, model, policy, budget_unit, "
                    "budget_value, tokens_in, tokens_out, kv_kept_fraction, kv_bytes_peak, "
                    "kv_bytes_full_peak, seconds, cost_micro_usd, full_cache_cost_micro_usd, "
                    "created_at) VALUES (:id, 1, 'm', :policy, :unit, :value, 7700, 100, 0.3, 1, "
                    "2, 55.0, :cost, :full, CURRENT_TIMESTAMP)"),
                    {"id": job, "policy": policy, "unit": unit, "value": value,
                     "cost": 62800 if policy == "namm" else 33514,
                     "full": 195093 if policy == "namm" else 47000})
        upgrade(url)
        with engine.connect() as conn:
            rows = {r.job_id: r for r in conn.execute(text(
                "SELECT job_id, budget_unit, budget_value, cost_micro_usd, "
                "full_cache_cost_micro_usd, counterfactual_method, counterfactual_estimated, "
                "price_id, billed_device_seconds, device, seconds_prefill, kv_token_steps "
                "FROM usage_records"))}
            admin = conn.execute(text("SELECT is_admin FROM api_keys")).scalar()
            rate = conn.execute(text("SELECT shadow_rate FROM tenants")).scalar()
            shadows = conn.execute(text("SELECT count(*) FROM shadow_runs")).scalar()
        assert admin is False or admin == 0
        assert rate == 0 and shadows == 0  # shadow runs are off until a tenant's rate is set
        namm, full = rows["n"], rows["f"]
        # no method stood behind the old counterfactual: no saving is claimed any more
        assert namm.full_cache_cost_micro_usd is None and namm.counterfactual_method is None
        assert namm.cost_micro_usd == 62800 and namm.budget_unit == "fraction"
        assert namm.price_id == "legacy" and namm.billed_device_seconds == 55.0
        assert namm.device == "unknown" and namm.seconds_prefill == 0 and namm.kv_token_steps is None
        assert not namm.counterfactual_estimated
        # the full cache: no budget, its own cost as counterfactual (zero saving)
        assert full.budget_unit is None and full.budget_value is None
        assert full.full_cache_cost_micro_usd == full.cost_micro_usd == 33514
        assert full.counterfactual_method == "self"
        downgrade(url, "0003")
        with engine.connect() as conn:
            back = dict(conn.execute(text(
                "SELECT job_id, full_cache_cost_micro_usd FROM usage_records")).all())
        assert back == {"n": 62800, "f": 33514}
        downgrade(url)
    finally:
        engine.dispose()
