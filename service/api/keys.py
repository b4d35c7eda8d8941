"""API keys: random tokens, stored only as sha256; tenants and keys are created here.

CLI: `python -m service.keys create-tenant NAME` prints a new raw key once (service/keys.py
forwards here).
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.models import ApiKey, Tenant, utcnow

KEY_PREFIX = "namm_"


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode("utf-8")).hexdigest()


def new_raw_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class IssuedKey:
    tenant_id: int
    key_id: int
    raw_key: str  # shown once; only its hash is stored


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def issue_key(session: Session, tenant: Tenant, label: str | None = None, *,
              is_admin: bool = False) -> IssuedKey:
    """`is_admin`: the key also reads every tenant's reports (service/api/principal.py)."""
    raw = new_raw_key()
    key = ApiKey(tenant_id=tenant.id, key_hash=hash_key(raw), prefix=raw[:12], label=label,
                 is_admin=is_admin)
    session.add(key)
    session.flush()
    return IssuedKey(tenant_id=tenant.id, key_id=key.id, raw_key=raw)


def revoke_keys(session: Session, tenant: Tenant, label: str | None = None) -> int:
    query = update(ApiKey).where(ApiKey.tenant_id == tenant.id, ApiKey.revoked_at.is_(None))
    if label is not None:
        query = query.where(ApiKey.label == label)
    return session.execute(query.values(revoked_at=utcnow())).rowcount or 0


def tenant_for_key_hash(session: Session, key_hash: str) -> int | None:
    """The tenant id owning the active key with this sha256, or None."""
    return tenants_for_key_hashes(session, [key_hash]).get(key_hash)


def tenants_for_key_hashes(session: Session, key_hashes: Iterable[str]) -> dict[str, int]:
    """{key hash: tenant id} for the active keys among `key_hashes` (one query)."""
    wanted = sorted(set(key_hashes))
    if not wanted:
        return {}
    rows = session.execute(select(ApiKey.key_hash, ApiKey.tenant_id).where(
        ApiKey.key_hash.in_(wanted), ApiKey.revoked_at.is_(None)))
    return {key_hash: tenant_id for key_hash, tenant_id in rows}


def main(argv: list[str] | None = None) -> int:
    from service.core.db import session_scope

    parser = argparse.ArgumentParser(description="Manage tenants and API keys")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create-tenant", help="create a tenant (if new) and print a new key")
    create.add_argument("name")
    create.add_argument("--label", default=None)
    create.add_argument("--admin", action="store_true",
                        help="the key reads every tenant's cost reports")
    revoke = sub.add_parser("revoke", help="revoke all keys of a tenant")
    revoke.add_argument("name")
    args = parser.parse_args(argv)

    with session_scope() as session:
        tenant = get_or_create_tenant(session, args.name)
        if args.command == "create-tenant":
            issued = issue_key(session, tenant, label=args.label, is_admin=args.admin)
            print(issued.raw_key)
            print(f"tenant {tenant.name!r} (id {tenant.id}): key shown once, store it now",
                  file=sys.stderr)
        else:
            print(f"revoked {revoke_keys(session, tenant)} key(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
