"""Per-tenant quota overrides (logic: service/jobs/quotas.py; migration 0005)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base, utcnow

class TenantQuota(Base):
    """One tenant's quotas; NULL: the settings' default for that quota."""

    __tablename__ = "tenant_quotas"

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           primary_key=True)
    max_active_jobs: Mapped[int | None] = mapped_column(Integer)
    max_tokens_per_day: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
