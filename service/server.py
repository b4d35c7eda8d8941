"""`python -m service.server`: forwards to service.api.server (the API processes)."""

import sys

from service.api.server import main

if __name__ == "__main__":
    sys.exit(main())
