"""`python -m service.migrate`: forwards to service.core.migrate (upgrade and downgrade)."""

import sys

from service.core.migrate import downgrade, main, upgrade

__all__ = ["downgrade", "main", "upgrade"]

if __name__ == "__main__":
    sys.exit(main())
