"""seal.py and vault.py: what the store holds is useless without the handle."""

from __future__ import annotations

import pytest

from splittoken import seal
from splittoken.seal import Record, SealBroken
from splittoken.vault import REFRESH_HANDLE_BYTES, Vault, new_refresh_handle

HANDLE = "Zm9vYmFyYmF6cXV4LXNpZ25hdHVyZS1vZi10aGUtand0LWFiY2RlZmdoaWprbG1u"
SECRET = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZS13b25kZXJsYW5kIiwiZXhwIjoxODAwMDAwMDAwfQ"
SUBJECT = "alice-wonderland@example.com"


def record(**kw: object) -> Record:
    fields: dict[str, object] = {"kind": "access", "secret": SECRET, "expires_at": 1.8e9, "subject": SUBJECT}
    fields.update(kw)
    return Record(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["access", "refresh", "rotated"])
def test_round_trip(kind: str) -> None:
    r = record(kind=kind, secret="ü€" + SECRET, subject="名前")
    assert seal.open_sealed(HANDLE, seal.seal(HANDLE, r)) == r


def test_round_trip_of_extremes() -> None:
    for r in (
        record(secret="", subject=""),
        record(secret="x" * 100_000),
        record(expires_at=0.0),
        record(expires_at=1.7976931348623157e308),
        record(secret='"\\\x00\ud800'),  # lone surrogate survives JSON with ensure_ascii
    ):
        assert seal.open_sealed(HANDLE, seal.seal(HANDLE, r)) == r


def test_seal_is_randomised() -> None:
    r = record()
    assert seal.seal(HANDLE, r) != seal.seal(HANDLE, r)


def test_store_key_is_sha256_hex_of_the_handle_and_not_the_handle() -> None:
    key = seal.store_key(HANDLE)
    assert len(key) == 64
    assert int(key, 16) >= 0
    assert HANDLE not in key
    assert key == seal.store_key(HANDLE)
    assert key != seal.store_key(HANDLE + "A")


def test_no_plaintext_in_sealed_bytes() -> None:
    sealed = seal.seal(HANDLE, record())
    for needle in (SECRET, SECRET[:12], SECRET.split(".")[1][:12], SUBJECT, "alice", HANDLE, HANDLE[:12]):
        assert needle.encode() not in sealed
    for needle in ("access", "secret", "subject", "expires_at", "1800000000"):
        assert needle.encode() not in sealed
    assert seal.store_key(HANDLE).encode() not in sealed


def test_record_moved_to_another_key_fails() -> None:
    other = new_refresh_handle()
    sealed = seal.seal(HANDLE, record())
    with pytest.raises(SealBroken):
        seal.open_sealed(other, sealed)
    with pytest.raises(SealBroken):
        seal.open_sealed(HANDLE[:-1], sealed)


def test_every_tampered_byte_fails() -> None:
    sealed = seal.seal(HANDLE, record(secret="s", subject=""))
    for i in range(len(sealed)):
        for flip in (0x01, 0x80):
            tampered = bytearray(sealed)
            tampered[i] ^= flip
            with pytest.raises(SealBroken):
                seal.open_sealed(HANDLE, bytes(tampered))


@pytest.mark.parametrize(
    "bad", [b"", b"\x01", b"\x01" + bytes(27), b"\x02" + bytes(64), bytes(64), b"\x01" * 64]
)
def test_garbage_fails(bad: bytes) -> None:
    with pytest.raises(SealBroken):
        seal.open_sealed(HANDLE, bad)


def test_truncated_and_extended_fail() -> None:
    sealed = seal.seal(HANDLE, record())
    for cut in (1, 13, 29, len(sealed) - 1):
        with pytest.raises(SealBroken):
            seal.open_sealed(HANDLE, sealed[:cut])
    with pytest.raises(SealBroken):
        seal.open_sealed(HANDLE, sealed + b"\x00")


def test_record_expired_with_leeway() -> None:
    r = record(expires_at=100.0)
    assert not r.expired(99.9)
    assert r.expired(100.0)
    assert not r.expired(104.0, leeway=5)
    assert r.expired(105.0, leeway=5)


# -----------------------------------------------------------------------------------------------------------
# Vault over an in-memory store


class MemoryStore:
    blocking = False

    def __init__(self) -> None:
        self.data: dict[str, tuple[bytes, float]] = {}

    def put(self, key: str, value: bytes, expires_at: float) -> None:
        self.data[key] = (value, expires_at)

    def get(self, key: str) -> bytes | None:
        item = self.data.get(key)
        return item[0] if item else None

    def delete(self, key: str) -> bool:
        return self.data.pop(key, None) is not None

    def stats(self) -> object:
        return None

    def purge(self) -> int:
        return 0

    def close(self) -> None:
        pass


def test_vault_keep_find_forget() -> None:
    store, now = MemoryStore(), [1000.0]
    vault = Vault(store, clock=lambda: now[0], leeway=5)  # type: ignore[arg-type]
    r = record(expires_at=1100.0)
    vault.keep_now(HANDLE, r)
    (key,) = store.data
    assert key == seal.store_key(HANDLE)
    assert store.data[key][1] == 1105.0  # the store keeps it for the leeway too
    assert vault.find_now(HANDLE) == r
    assert vault.find_now(HANDLE + "x") is None
    now[0] = 1104.9
    assert vault.find_now(HANDLE) == r
    now[0] = 1105.0
    assert vault.find_now(HANDLE) is None  # expired records are refused before the store purges them
    now[0] = 1000.0
    assert vault.forget_now(HANDLE)
    assert not vault.forget_now(HANDLE)
    assert vault.find_now(HANDLE) is None


def test_vault_record_copied_under_another_key_is_not_found() -> None:
    store = MemoryStore()
    vault = Vault(store, clock=lambda: 0.0)  # type: ignore[arg-type]
    vault.keep_now(HANDLE, record())
    attacker = new_refresh_handle()
    store.data[seal.store_key(attacker)] = store.data[seal.store_key(HANDLE)]
    assert vault.find_now(attacker) is None


def test_new_refresh_handles_are_long_random_base64url() -> None:
    handles = {new_refresh_handle() for _ in range(1000)}
    assert len(handles) == 1000
    for h in handles:
        assert len(h) >= REFRESH_HANDLE_BYTES * 4 // 3
        assert set(h) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
