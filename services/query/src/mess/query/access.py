"""Who may call the query service: the read keys, when a setting asks for them."""

from mess.query.config import Settings
from mess.runtime.access import KeyStore


def open_read_keys(settings: Settings) -> KeyStore | None:
    """None when reads are open; raises ``KeyConfigError`` (so the service does not start) on a bad keys file
    or on no key at all."""
    if not settings.require_read_key:
        return None
    return KeyStore(
        settings.read_key_entries(),
        file=settings.read_api_keys_file,
        check_interval_s=settings.api_keys_check_s,
        require_keys=True,
        name="query read keys",
    )
