"""Who may call a service: API keys (kept only as digests), per-key rate limits, allowed browser origins.

A key is a random string a client sends in the ``X-API-Key`` header. The
service never holds the keys themselves, only ``label:sha256hex`` entries:
the label names the key in logs, the digest checks it. Because keys are
minted with 32 random bytes (``mint_key``), a plain SHA-256 is enough: there
is nothing to brute-force that a slow hash would protect.

Entries come from settings (fixed for the life of the process) and from a
keys file, one entry a line, which ``KeyStore`` re-reads when it changes, so
keys are added and revoked without a restart. The change check is one
``stat`` of the path, at most every ``check_interval_s``, on the request
path. ``os.stat`` follows symlinks, so a Kubernetes Secret volume, whose
files are symlinks into a directory that the kubelet replaces in one rename,
shows up as a new inode.

A keys file that changed but cannot be applied (a typo, a key pasted instead
of its digest, a refused key) leaves the keys loaded before in force: failing
closed would lock every client out over one bad edit. But that keeps a key
the edit meant to revoke, so it is never quiet: the failure is logged at
ERROR when found and again every ``NAG_INTERVAL_S`` while it lasts, the gauge
``mess_api_keys_file_applied`` is 0 (alert on it), the counter
``mess_api_keys_file_rejected_total`` counts each rejected version, and
``KeyStore.file_problem`` says why. A file that cannot be read at start-up
stops the service instead.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from prometheus_client import Counter, Gauge
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware

log = logging.getLogger(__name__)

KEY_HEADER = "X-API-Key"
KEY_PREFIX = "mess_"
LABEL_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}"
_LABEL = re.compile(LABEL_PATTERN)
_DIGEST = re.compile(r"[0-9a-f]{64}")
_KEY_BYTES = 32
# While a keys file on disk is not the one in force, the error is repeated this often.
NAG_INTERVAL_S = 60.0

KEYS_FILE_APPLIED = Gauge(
    "mess_api_keys_file_applied",
    "1 when the keys file on disk is the one in force; 0 when its last change could not be applied "
    "(the keys loaded before are still accepted: a key meant to be revoked may be among them)",
    ["store"],
)
KEYS_FILE_REJECTED = Counter(
    "mess_api_keys_file_rejected_total", "changes of a keys file that could not be applied", ["store"]
)


class KeyConfigError(ValueError):
    """Key entries that cannot be used; the message names the place, never the content."""


@dataclass(frozen=True)
class KeyEntry:
    """One accepted key: a name for logs and the SHA-256 of the key."""

    label: str
    digest: bytes = field(repr=False)


def digest_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def mint_key() -> str:
    """A new key: 32 random bytes, URL-safe, with a prefix secret scanners can look for."""
    return KEY_PREFIX + secrets.token_urlsafe(_KEY_BYTES)


def key_line(label: str, key: str) -> str:
    """The ``label:sha256hex`` entry of a key, as the keys file and the ``*_HASHES`` settings take it."""
    if not _LABEL.fullmatch(label):
        raise KeyConfigError(f"a label is 1 to 64 of A-Z a-z 0-9 . _ @ - (starting with a letter or digit): {label!r}")
    return f"{label}:{digest_key(key).hex()}"


def parse_entries(text: str, source: str) -> tuple[KeyEntry, ...]:
    """``label:sha256hex`` entries separated by newlines or commas; ``#`` starts a comment.

    One bad entry refuses the whole text: applying half a file could revoke keys nobody meant to revoke."""
    entries: list[KeyEntry] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        for item in raw.split("#", 1)[0].split(","):
            item = item.strip()
            if not item:
                continue
            label, separator, digest = item.partition(":")
            label, digest = label.strip(), digest.strip().lower()
            # The entry itself is never quoted: a line that is not a digest may be a key pasted by mistake.
            where = f"{source}, line {number}" if "\n" in text.strip() else source
            if not separator or not _LABEL.fullmatch(label):
                raise KeyConfigError(f"{where}: an entry is not `label:sha256hex` (labels: A-Z a-z 0-9 . _ @ -)")
            if not _DIGEST.fullmatch(digest):
                raise KeyConfigError(
                    f"{where}: the entry labelled {label!r} is not a SHA-256 digest (64 hex digits); "
                    "store `mess-dev keys hash LABEL` of a key, never the key"
                )
            entries.append(KeyEntry(label, bytes.fromhex(digest)))
    return tuple(entries)


def plaintext_entries(keys: str, label_prefix: str) -> tuple[KeyEntry, ...]:
    """Comma-separated keys, hashed at once; the labels say only where each came from."""
    return tuple(
        KeyEntry(f"{label_prefix}-{number}", digest_key(key))
        for number, key in enumerate((k.strip() for k in keys.split(",") if k.strip()), start=1)
    )


_FileSignature = tuple[int, int, int, int]


class KeyStore:
    """The accepted keys: fixed entries plus those of an optional keys file, re-read when the file changes.

    ``refused`` maps digests that must never be accepted (a public development key, say) to the reason:
    at construction they raise, in a reloaded file they make the reload fail. ``require_keys`` makes an
    empty store a construction error (production), while a reload may still empty it: that revokes every
    key, which is what an operator who emptied the file asked for.
    """

    def __init__(
        self,
        entries: Iterable[KeyEntry] = (),
        *,
        file: Path | None = None,
        check_interval_s: float = 1.0,
        refused: Mapping[bytes, str] | None = None,
        require_keys: bool = False,
        name: str = "API keys",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fixed = tuple(entries)
        self._file = file
        self._interval = check_interval_s
        self._refused = dict(refused or {})
        self._name = name
        self._clock = clock
        self._signature: _FileSignature | None = None
        self._next_check = 0.0
        self._problem: str | None = None
        self._next_nag = 0.0
        file_entries: tuple[KeyEntry, ...] = ()
        if file is not None:
            try:
                self._signature = _signature(file)
                file_entries = parse_entries(file.read_text(encoding="utf-8"), str(file))
            except (OSError, UnicodeDecodeError) as exc:
                raise KeyConfigError(f"{name}: cannot read {file}: {exc.__class__.__name__}") from exc
            self._next_check = clock() + check_interval_s
        self._check_refused(self._fixed + file_entries)
        self._entries = self._fixed + file_entries
        if require_keys and not self._entries:
            raise KeyConfigError(f"{name}: no key is configured")
        if file is not None:
            KEYS_FILE_APPLIED.labels(name).set(1)
        log.info("%s: %d key(s) accepted: %s", name, len(self._entries), ", ".join(self.labels) or "none")

    @property
    def file_problem(self) -> str | None:
        """Why the keys file on disk is not the one in force, or None when it is (or there is none)."""
        return self._problem

    @property
    def labels(self) -> list[str]:
        return [entry.label for entry in self._entries]

    def __len__(self) -> int:
        return len(self._entries)

    def match(self, offered: str | None) -> KeyEntry | None:
        """The entry of ``offered``, or None. Every entry is compared, in constant time, with no early exit,
        so the time taken says nothing about which key came close."""
        self.refresh()
        if not offered:
            return None
        digest = digest_key(offered)
        hits = [entry for entry in self._entries if hmac.compare_digest(digest, entry.digest)]
        return hits[0] if hits else None

    def refresh(self) -> bool:
        """Re-read the keys file if it changed (checked at most every ``check_interval_s``); True when it did.

        A file that cannot be read or parsed leaves the keys loaded before in force (a half-written or
        briefly missing file must not lock every client out), and says so loudly: an ERROR now and every
        ``NAG_INTERVAL_S`` while it lasts, ``mess_api_keys_file_applied`` 0 and ``file_problem`` set."""
        if self._file is None:
            return False
        now = self._clock()
        if now < self._next_check:
            return False
        self._next_check = now + self._interval
        try:
            signature = _signature(self._file)
        except OSError as exc:
            if self._signature is not None:
                self._reject(f"{self._file} is gone ({exc.__class__.__name__})", now)
            self._signature = None
            self._nag(now)
            return False
        if signature == self._signature:
            self._nag(now)
            return False
        self._signature = signature
        try:
            file_entries = parse_entries(self._file.read_text(encoding="utf-8"), str(self._file))
            self._check_refused(file_entries)
        except (OSError, UnicodeDecodeError, KeyConfigError) as exc:
            reason = str(exc) if isinstance(exc, KeyConfigError) else exc.__class__.__name__
            self._reject(f"{self._file} not applied ({reason})", now)
            return False
        if self._problem is not None:
            log.warning("%s: %s applied again; the earlier problem is over", self._name, self._file)
        self._problem = None
        KEYS_FILE_APPLIED.labels(self._name).set(1)
        self._entries = self._fixed + file_entries
        if not self._entries:
            log.warning("%s: %s holds no key now: every request that needs one is refused", self._name, self._file)
        log.info(
            "%s: reloaded %s: %d key(s) accepted: %s",
            self._name,
            self._file,
            len(self._entries),
            ", ".join(self.labels) or "none",
        )
        return True

    def _reject(self, problem: str, now: float) -> None:
        self._problem = problem
        KEYS_FILE_APPLIED.labels(self._name).set(0)
        KEYS_FILE_REJECTED.labels(self._name).inc()
        self._next_nag = now  # said at once
        self._nag(now)

    def _nag(self, now: float) -> None:
        if self._problem is None or now < self._next_nag:
            return
        self._next_nag = now + NAG_INTERVAL_S
        log.error(
            "%s: %s; the %d key(s) loaded before stay in force, including any the change meant to revoke",
            self._name,
            self._problem,
            len(self._entries),
        )

    def _check_refused(self, entries: Iterable[KeyEntry]) -> None:
        for entry in entries:
            reason = self._refused.get(entry.digest)
            if reason is not None:
                raise KeyConfigError(f"{self._name}: the key labelled {entry.label!r} is refused: {reason}")


def _signature(path: Path) -> _FileSignature:
    # Size and mtime catch an edit in place; device and inode catch a replaced file or a swapped symlink.
    status = os.stat(path)
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


class AnyOf:
    """Several key stores answering as one (read routes accept read keys and write keys alike)."""

    def __init__(self, *stores: KeyStore) -> None:
        self._stores = stores

    def match(self, offered: str | None) -> KeyEntry | None:
        hits = [store.match(offered) for store in self._stores]
        return next((hit for hit in hits if hit is not None), None)


class TokenBuckets:
    """A token bucket per key, in this process: ``rate_per_s`` requests a second on average, ``burst`` at once.

    Each replica counts on its own, so N replicas admit up to N times the rate; buckets exist only for
    keys that authenticated, so their number is bounded by the keys configured."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[bytes, tuple[float, float]] = {}

    def take(self, key: bytes) -> float:
        """Spend one token of ``key``'s bucket: 0.0 when granted, else the seconds until one is there."""
        now = self._clock()
        tokens, then = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - then) * self._rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self._rate


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, never 0 (a client would retry at once and be refused again)."""
    return str(max(1, math.ceil(seconds)))


def parse_origins(value: str) -> list[str]:
    """Comma-separated browser origins (``https://app.example.org``), or ``*``; anything else is refused,
    since an origin with a path or a trailing slash never matches and would fail silently."""
    origins = [origin.strip() for origin in value.split(",") if origin.strip()]
    for origin in origins:
        if origin == "*":
            continue
        parts = urlsplit(origin)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path
            or parts.query
            or parts.fragment
            or parts.username
        ):
            raise ValueError(f"{origin!r} is not an origin: scheme://host[:port], with no path or trailing slash")
    if "*" in origins and len(origins) > 1:
        raise ValueError("`*` allows every origin; give it alone or list the origins")
    return origins


def allow_origins(app: Starlette, origins: list[str], methods: list[str], expose_headers: list[str]) -> None:
    """CORS for the configured origins only; with none, no CORS header is ever sent (browsers then refuse
    cross-origin reads). Credentials (cookies) are never allowed: keys travel in a header a script sets."""
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_credentials=False,
        allow_methods=methods,
        allow_headers=[KEY_HEADER, "Content-Type", "Range", "X-Request-ID"],
        expose_headers=expose_headers,
        max_age=600,
    )
