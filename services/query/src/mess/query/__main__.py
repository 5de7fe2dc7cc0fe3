"""`python -m mess.query` runs the service."""

import uvicorn

from mess.query.config import Settings
from mess.query.main import create_app
from mess.runtime.logging import configure_logging


def main() -> None:
    settings = Settings()
    configure_logging("query", settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=settings.access_log,
    )


if __name__ == "__main__":
    main()
