"""`python -m service.migrate`: forwards to service.core.migrate (upgrade and downgrade)."""

import sys

from service.core.migrate import downgrade, main, upgrade  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
