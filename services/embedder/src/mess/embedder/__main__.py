"""`python -m mess.embedder` runs the service until SIGTERM, then exits 0 once
the poll batch in hand is committed (see lifespan.py), or 3 if it could not start."""

import sys

from mess.embedder.config import Settings
from mess.embedder.main import create_app
from mess.runtime.logging import configure_logging
from mess.runtime.serving import serve


def main() -> int:
    settings = Settings()
    configure_logging("embedder", settings.log_level, settings.stack.log_format)
    return serve(create_app(settings), host=settings.host, port=settings.port, graceful_s=settings.shutdown_grace_s)


if __name__ == "__main__":
    sys.exit(main())
