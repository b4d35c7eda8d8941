"""`python -m service.demo --url URL --key KEY`: forwards to service.dev.demo."""

import sys

from service.dev.demo import main

if __name__ == "__main__":
    sys.exit(main())
