"""`python -m service.repos submit PATH` (see service/repos/cli.py)."""

import sys

from service.repos.cli import main

if __name__ == "__main__":
    sys.exit(main())
