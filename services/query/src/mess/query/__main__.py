"""`python -m mess.query` runs the service; it exits 0 after a graceful SIGTERM, 3 when start-up failed."""

import sys

from mess.query.config import Settings
from mess.query.main import create_app
from mess.runtime.logging import configure_logging
from mess.runtime.serving import serve


def main() -> int:
    settings = Settings()
    configure_logging("query", settings.log_level, settings.stack.log_format)
    return serve(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        graceful_s=settings.shutdown_grace_s,
        access_log=settings.access_log,
        limits=settings.client_limits(),
    )


if __name__ == "__main__":
    sys.exit(main())
