import sys

from job_handlers.cli import main

sys.exit(main())
