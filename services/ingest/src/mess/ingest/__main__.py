"""`python -m mess.ingest` runs the service; it exits 0 after a graceful SIGTERM, 3 when start-up failed."""

import sys

from mess.ingest.config import Settings
from mess.ingest.main import create_app
from mess.runtime.logging import configure_logging
from mess.runtime.serving import serve


def main() -> int:
    settings = Settings()
    configure_logging("ingest", settings.log_level, settings.stack.log_format)
    return serve(create_app(settings), host=settings.host, port=settings.port, graceful_s=settings.shutdown_grace_s)


if __name__ == "__main__":
    sys.exit(main())
