"""Who may call the ingest service: the key stores and the write rate limit, built from the settings."""

from dataclasses import dataclass

from mess.ingest.config import REFUSED_KEYS, Settings
from mess.runtime.access import AnyOf, KeyStore, TokenBuckets


@dataclass(frozen=True)
class IngestAccess:
    write_keys: KeyStore
    read_keys: AnyOf | None  # None: reads are open
    write_rate: TokenBuckets | None  # None: no rate limit


def open_access(settings: Settings) -> IngestAccess:
    """Reads the keys files; raises ``KeyConfigError`` (so the service does not start) on a bad one, and in
    production on no key at all or a public one."""
    production = settings.environment == "production"
    refused = REFUSED_KEYS if production else None
    write_keys = KeyStore(
        settings.write_key_entries(),
        file=settings.api_keys_file,
        check_interval_s=settings.api_keys_check_s,
        refused=refused,
        require_keys=production,
        name="ingest write keys",
    )
    read_keys = None
    if settings.require_read_key:
        read_only = KeyStore(
            settings.read_key_entries(),
            file=settings.read_api_keys_file,
            check_interval_s=settings.api_keys_check_s,
            refused=refused,
            name="ingest read keys",
        )
        read_keys = AnyOf(read_only, write_keys)
    write_rate = TokenBuckets(settings.write_rate_per_s, settings.write_burst) if settings.write_rate_per_s else None
    return IngestAccess(write_keys, read_keys, write_rate)
