"""One-shot schema upgrade: `python -m service.migrate` (compose runs it before api/workers;
service/migrate.py forwards here).

Processes never migrate on their own start: two replicas racing on DDL is how schemas break.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

from service.core.settings import get_settings, safe_url

ROOT = Path(__file__).resolve().parents[2]


def alembic_config(database_url: str | None = None) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    if database_url:
        cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("revision", nargs="?", default="head")
    parser.add_argument("--downgrade", action="store_true", help="downgrade to REVISION instead")
    args = parser.parse_args(argv)
    url = get_settings().database.url
    print(f"migrating {safe_url(url)} -> {args.revision}", file=sys.stderr)
    if args.downgrade:
        downgrade(revision=args.revision)
    else:
        upgrade(revision=args.revision)
    return 0


if __name__ == "__main__":
    sys.exit(main())
