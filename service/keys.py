"""`python -m service.keys create-tenant NAME`: forwards to service.api.keys."""

import sys

from service.api.keys import main

if __name__ == "__main__":
    sys.exit(main())
