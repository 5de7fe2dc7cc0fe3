"""Run-time pieces every mess service shares: where the backing services are,
how logging is set up, how a dead letter is built. Imported, never run."""

from mess.runtime.endpoints import StackSettings
from mess.runtime.logging import configure_logging

__all__ = ["StackSettings", "configure_logging"]
