import sys

from service.reports.cli import main

sys.exit(main())
