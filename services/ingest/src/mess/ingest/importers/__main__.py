"""`python -m mess.ingest.importers` runs the importer command line."""

import sys

from mess.ingest.importers.cli import main

if __name__ == "__main__":
    sys.exit(main())
