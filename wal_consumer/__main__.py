import sys

from wal_consumer.cli import main

sys.exit(main())
