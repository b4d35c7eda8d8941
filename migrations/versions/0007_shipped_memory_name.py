"""The shipped memory's true name (issue 21): what the service ran as `namm` was the surprisal
ranking (sinks + recent window + word surprisal; its attention scorer was all zeros), now the
policy `surprisal`, while `namm` names only a learned attention memory, which is refused until
one ships. Work already accepted under the old name must still run as it was asked: unfinished
jobs and batches, and every schedule, move to `surprisal`. Finished rows and usage records keep
the name they ran under (the record of what happened).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 08:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNFINISHED_JOBS = "('waiting', 'queued', 'running')"
UNFINISHED_BATCHES = "('queued', 'running', 'aggregating')"


def _rename(old: str, new: str) -> None:
    op.execute(f"UPDATE jobs SET policy = '{new}' WHERE policy = '{old}' "
               f"AND status IN {UNFINISHED_JOBS}")
    op.execute(f"UPDATE batches SET policy = '{new}' WHERE policy = '{old}' "
               f"AND status IN {UNFINISHED_BATCHES}")
    op.execute(f"UPDATE schedules SET policy = '{new}' WHERE policy = '{old}'")


def upgrade() -> None:
    _rename("namm", "surprisal")


def downgrade() -> None:
    _rename("surprisal", "namm")  # the code before 0007 knows the shipped memory as `namm`
