"""Settings: one prefix, nested sections, .env support, secrets never printed."""

import pytest
from pydantic import SecretStr, ValidationError

from namm.spec import Budget
from service.core.settings import Settings, safe_url


def test_nested_env_with_prefix(monkeypatch):
    monkeypatch.setenv("NAMM_DATABASE__URL", "postgresql+psycopg://app:s3cret@db:5432/namm")
    monkeypatch.setenv("NAMM_DEFAULTS__POLICY", "h2o")
    monkeypatch.setenv("NAMM_DEFAULTS__BUDGET", '{"tokens": 2048}')
    monkeypatch.setenv("NAMM_LIMITS__MAX_DOCUMENT_BYTES", "1234")
    monkeypatch.setenv("NAMM_PRICES__GPU_SECOND_MICRO_USD", "900")
    monkeypatch.setenv("NAMM_MODEL__PATH", "/models/llama3-8b")
    s = Settings(_env_file=None)
    assert s.database.url.get_secret_value().endswith("@db:5432/namm")
    assert s.defaults.policy == "h2o" and s.defaults.budget == Budget.tokens(2048)
    assert s.limits.max_document_bytes == 1234
    assert s.prices.gpu_second_micro_usd == 900
    assert s.model.path == "/models/llama3-8b"


def test_dotenv_file_is_read(tmp_path, monkeypatch):
    monkeypatch.delenv("NAMM_BROKER__URL", raising=False)
    env_file = tmp_path / ".env"
    env_file.write_text("NAMM_BROKER__URL=redis://:pw@redis:6379/0\nNAMM_API__PORT=9001\n")
    s = Settings(_env_file=env_file)
    assert s.broker.url.get_secret_value() == "redis://:pw@redis:6379/0"
    assert s.api.port == 9001


def test_secrets_are_masked():
    s = Settings(_env_file=None, database={"url": "postgresql+psycopg://app:s3cret@db/namm"})
    assert isinstance(s.database.url, SecretStr)
    assert "s3cret" not in repr(s) and "s3cret" not in str(s.model_dump())
    assert "s3cret" not in safe_url(s.database.url)
    assert "s3cret" not in safe_url("redis://:s3cret@redis:6379/0")
    assert "s3cret" not in safe_url("sqla+postgresql://u:s3cret@h/db")


def test_visibility_timeout_must_outlast_jobs():
    s = Settings(_env_file=None, broker={"visibility_timeout_s": 100},
                 worker={"soft_time_limit_s": 200, "time_limit_s": 300})
    with pytest.raises(ValueError, match="visibility_timeout"):
        s.check_broker_visibility()
    with pytest.raises(ValidationError):
        Settings(_env_file=None, worker={"soft_time_limit_s": 300, "time_limit_s": 300})


def test_update_interval_is_checked_at_start():
    # a bad interval is the deployment's mistake: refused here, never blamed on a job's input
    with pytest.raises(ValidationError, match="multiple of 16"):
        Settings(_env_file=None, model={"n_up": 100})


def test_default_budget_forms(monkeypatch):
    assert Settings(_env_file=None).defaults.budget is None  # each policy's own default
    monkeypatch.setenv("NAMM_DEFAULTS__BUDGET", "0.3")
    assert Settings(_env_file=None).defaults.budget == Budget.fraction(0.3)
    monkeypatch.setenv("NAMM_DEFAULTS__BUDGET", "512")  # ambiguous: refused at start
    with pytest.raises(ValidationError, match="ambiguous"):
        Settings(_env_file=None)
