"""The single logging setup: one line per record, key=value friendly, to stderr."""

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(service: str, level: str = "INFO") -> None:
    root = logging.getLogger()
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {service} %(name)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiokafka logs every reconnect attempt at ERROR; one warning is enough.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
