"""Key stores, keys files reloaded in place (as Kubernetes updates a mounted Secret), token buckets, origins."""

import hmac
import logging
import os
from pathlib import Path

import pytest

from mess.runtime import access
from mess.runtime.access import (
    KeyConfigError,
    KeyEntry,
    KeyStore,
    TokenBuckets,
    digest_key,
    key_line,
    mint_key,
    parse_entries,
    parse_origins,
    retry_after,
)

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_minted_keys_are_long_random_and_their_entry_is_the_sha256() -> None:
    keys = {mint_key() for _ in range(50)}
    assert len(keys) == 50
    key = keys.pop()
    assert key.startswith("mess_") and len(key) >= 5 + 43  # 32 random bytes in URL-safe base64
    label, digest = key_line("ci", key).split(":")
    assert label == "ci" and bytes.fromhex(digest) == digest_key(key)


def test_entries_take_comments_commas_and_newlines() -> None:
    a, b, c = (key_line(label, mint_key()) for label in ("a", "b", "c"))
    text = f"# uploaders\n{a}   # since June\n\n{b},{c}\n"
    assert [e.label for e in parse_entries(text, "keys")] == ["a", "b", "c"]


def test_a_store_holds_no_key_and_accepts_only_the_right_one() -> None:
    key = mint_key()
    store = KeyStore([KeyEntry("ci", digest_key(key))])
    assert store.match(key) == KeyEntry("ci", digest_key(key))
    assert store.match(key + "x") is None
    assert store.match("") is None
    assert store.match(None) is None
    assert key not in repr(vars(store))  # only digests are held


def test_every_entry_is_compared_even_after_a_match(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [mint_key() for _ in range(5)]
    store = KeyStore([KeyEntry(f"k{i}", digest_key(k)) for i, k in enumerate(keys)])
    calls: list[bytes] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return real(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", counting)
    assert store.match(keys[0]) is not None
    assert len(calls) == 5  # no early exit at the first (matching) entry
    calls.clear()
    assert store.match("wrong") is None
    assert len(calls) == 5


def _write(path: Path, *lines: str) -> None:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_a_keys_file_is_reread_when_it_changes_so_keys_rotate_without_restart(tmp_path: Path) -> None:
    old, new = mint_key(), mint_key()
    path = tmp_path / "keys"
    _write(path, key_line("old", old))
    clock = Clock()
    store = KeyStore(file=path, check_interval_s=5.0, clock=clock)
    assert store.labels == ["old"]

    _write(path, key_line("old", old), key_line("new", new))  # add the new key
    assert store.match(new) is None  # not checked again before the interval
    clock.now += 5.0
    assert store.match(new) is not None

    _write(path, key_line("new", new))  # revoke the old one
    clock.now += 5.0
    assert store.match(old) is None
    assert store.match(new) is not None


def test_a_kubernetes_secret_volume_update_is_seen(tmp_path: Path) -> None:
    """The kubelet writes a new timestamped directory, then renames a `..data` symlink onto it; the file
    the pod reads is a symlink through `..data`, so only the target's inode changes."""
    old, new = mint_key(), mint_key()
    first = tmp_path / "..2025_06_01_10_00_00.1"
    first.mkdir()
    _write(first / "api-keys", key_line("old", old))
    (tmp_path / "..data").symlink_to(first.name)
    (tmp_path / "api-keys").symlink_to("..data/api-keys")
    clock = Clock()
    store = KeyStore(file=tmp_path / "api-keys", check_interval_s=0, clock=clock)
    assert store.match(old) is not None

    second = tmp_path / "..2025_06_01_10_05_00.2"
    second.mkdir()
    _write(second / "api-keys", key_line("new", new))
    os.symlink(second.name, tmp_path / "..data_tmp")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    for stale in first.iterdir():
        stale.unlink()
    first.rmdir()

    assert store.match(new) is not None
    assert store.match(old) is None


def test_a_broken_or_missing_file_keeps_the_keys_in_force_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = mint_key()
    path = tmp_path / "keys"
    _write(path, key_line("ci", key))
    store = KeyStore(file=path, check_interval_s=0)

    caplog.set_level(logging.ERROR, logger="mess.runtime.access")
    pasted = mint_key()
    _write(path, key_line("ci", key), f"other:{pasted}")  # a key pasted where its digest belongs
    assert store.match(key) is not None
    assert "line 2" in caplog.text and pasted not in caplog.text

    path.unlink()
    assert store.match(key) is not None
    assert "is gone" in caplog.text

    _write(path, "# every key revoked")
    assert store.match(key) is None


def test_refused_keys_fail_the_start_and_a_reload(tmp_path: Path) -> None:
    refused = {digest_key("mess-dev-key"): "a public key"}
    path = tmp_path / "keys"
    _write(path, key_line("dev", "mess-dev-key"))
    with pytest.raises(KeyConfigError, match="refused: a public key"):
        KeyStore(file=path, refused=refused)
    good = mint_key()
    _write(path, key_line("ci", good))
    store = KeyStore(file=path, refused=refused, check_interval_s=0)
    _write(path, key_line("ci", good), key_line("dev", "mess-dev-key"))
    assert store.match("mess-dev-key") is None
    assert store.match(good) is not None


def test_an_empty_store_is_refused_only_where_keys_are_required(tmp_path: Path) -> None:
    with pytest.raises(KeyConfigError, match="no key"):
        KeyStore(require_keys=True)
    with pytest.raises(KeyConfigError, match="cannot read"):
        KeyStore(file=tmp_path / "absent")
    assert len(KeyStore()) == 0


def test_token_buckets_allow_a_burst_then_the_rate_per_key() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate_per_s=2.0, burst=3, clock=clock)
    assert [buckets.take(b"a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take(b"a") == pytest.approx(0.5)
    assert buckets.take(b"b") == 0.0  # another key has its own bucket
    clock.now += 0.5
    assert buckets.take(b"a") == 0.0
    assert buckets.take(b"a") > 0
    clock.now += 60
    assert [buckets.take(b"a") for _ in range(4)][-1] > 0  # refills to the burst, not beyond
    assert retry_after(0.01) == "1" and retry_after(1.2) == "2"


def test_origins_are_exact_or_refused() -> None:
    assert parse_origins("") == []
    assert parse_origins(" https://app.example.org , http://localhost:5173") == [
        "https://app.example.org",
        "http://localhost:5173",
    ]
    assert parse_origins("*") == ["*"]
    for bad in ("https://app.example.org/", "app.example.org", "ftp://x.org", "*,https://a.org"):
        with pytest.raises(ValueError, match="origin"):
            parse_origins(bad)
