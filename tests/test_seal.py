"""seal.py: what the store holds is useless without the handle."""

from __future__ import annotations

import json
import os
import secrets

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from splittoken import seal
from splittoken.seal import Record, SealBroken

HANDLE = "Zm9vYmFyYmF6cXV4LXNpZ25hdHVyZS1vZi10aGUtand0LWFiY2RlZmdoaWprbG1u"
SECRET = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZS13b25kZXJsYW5kIiwiZXhwIjoxODAwMDAwMDAwfQ"
SUBJECT = "alice-wonderland@example.com"


def sealing_key(handle: str) -> bytes:
    """The sealing key of a handle, derived as seal.py documents it, without its code."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"splittoken seal v1")
    return hkdf.derive(handle.encode())


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
    other = secrets.token_urlsafe(32)
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


def test_records_older_than_their_fields_still_open() -> None:
    # Records sealed before rotated records knew their client and refresh token: the fields are empty.
    old = {"kind": "rotated", "secret": '{"refresh_token": "x"}', "expires_at": 1.8e9, "subject": SUBJECT}
    nonce = os.urandom(12)
    aad = b"\x01" + seal.store_key(HANDLE).encode()
    sealed = b"\x01" + nonce + AESGCM(sealing_key(HANDLE)).encrypt(nonce, json.dumps(old).encode(), aad)
    opened = seal.open_sealed(HANDLE, sealed)
    assert opened == Record("rotated", '{"refresh_token": "x"}', 1.8e9, SUBJECT)
    assert (opened.issuer, opened.client, opened.refresh_token) == ("", "", "")
    assert opened.real_token(HANDLE) == ""  # no refresh token to send for it: refused, never guessed


def test_real_token_is_what_the_authorization_server_issued() -> None:
    assert record().real_token(HANDLE) == f"{SECRET}.{HANDLE}"
    assert record(kind="refresh", secret="rt-1").real_token(HANDLE) == "rt-1"
    rotated = record(kind="rotated", secret='{"refresh_token": "next"}', client="c#d", refresh_token="rt-0")
    assert rotated.real_token(HANDLE) == "rt-0"
    assert seal.open_sealed(HANDLE, seal.seal(HANDLE, rotated)) == rotated


def test_record_expired_with_leeway() -> None:
    r = record(expires_at=100.0)
    assert not r.expired(99.9)
    assert r.expired(100.0)
    assert not r.expired(104.0, leeway=5)
    assert r.expired(105.0, leeway=5)
