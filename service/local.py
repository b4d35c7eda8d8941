"""`python -m service.local` (`make run`): forwards to service.dev.local."""

import sys

from service.dev.local import main

if __name__ == "__main__":
    sys.exit(main())
