"""`python -m mess.indexer` runs the service."""

import uvicorn

from mess.indexer.config import Settings
from mess.indexer.main import create_app
from mess.runtime.logging import configure_logging


def main() -> None:
    settings = Settings()
    configure_logging("indexer", settings.log_level)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None)


if __name__ == "__main__":
    main()
