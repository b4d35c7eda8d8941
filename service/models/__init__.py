"""The ORM models (SQLAlchemy 2, typed): every table of the service, in one home.

Importing `service.models` (or any module in it) loads every table into `Base.metadata`, so
relationships by name resolve and Alembic compares the whole schema, whatever was imported
first. The modules here hold tables only; what the service does with them lives beside its
job (service/jobs/quotas.py, service/repos/repository.py, ...). The schema itself changes only
through migrations/.
"""

from service.models.base import (BUDGET_CHECK, JSONType, NAMING, Base, HasBudget, as_utc, budget_columns,
                                  new_id, utcnow)
from service.models.jobs import (FINISHED_STATUSES, ApiKey, Document, Job, JobStatus, Result, Tenant,
                                  UsageRecord)
from service.models.batches import (BATCH_FINISHED, Batch, BatchFile, BatchStatus, BatchUpload, FileStatus,
                                     Schedule, SkippedFile)
from service.models.memories import MemoryStatus, StoredDocument
from service.models.idempotency import MAX_KEY_CHARS, IdempotencyKey
from service.models.quotas import TenantQuota
from service.models.shadow import DONE, FAILED, QUEUED, RUNNING, ShadowRun

__all__ = [
    "BUDGET_CHECK", "JSONType", "NAMING", "Base", "HasBudget", "as_utc", "budget_columns", "new_id", "utcnow",
    "FINISHED_STATUSES", "ApiKey", "Document", "Job", "JobStatus", "Result", "Tenant", "UsageRecord",
    "BATCH_FINISHED", "Batch", "BatchFile", "BatchStatus", "BatchUpload", "FileStatus", "Schedule", "SkippedFile",
    "MemoryStatus", "StoredDocument",
    "MAX_KEY_CHARS", "IdempotencyKey", "TenantQuota",
    "DONE", "FAILED", "QUEUED", "RUNNING", "ShadowRun",
]
