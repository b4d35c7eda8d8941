"""`python -m service.jobs.shadow_rate TENANT RATE`: the share (0 to 1) of a tenant's finished
jobs that are rerun with the full cache at low priority (service/jobs/shadow.py); 0 turns it off."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.jobs.shadow_rate", description=__doc__)
    parser.add_argument("tenant")
    parser.add_argument("rate", type=float)
    args = parser.parse_args(argv)

    from service.core.db import session_scope
    from service.jobs.shadow import set_rate

    try:
        with session_scope() as session:
            set_rate(session, args.tenant, args.rate)
    except (ValueError, LookupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"tenant {args.tenant!r}: shadow rate {args.rate}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
