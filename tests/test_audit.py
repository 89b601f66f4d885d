"""audit.py: handle ids, and audit lines that never hold a secret (each field checked before it is queued)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from splittoken import seal
from splittoken.audit import Event, Reason, handle_id
from splittoken.audit_trail import AuditTrail

HEADER_PAYLOAD = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJhbGljZSIsImVtYWlsIjoiYWxpY2VAZXhhbXBsZS5jb20ifQ"
)
HANDLE = "c2lnbmF0dXJlLW9mLXRoZS10b2tlbi1hYmNkZWZnaGlqa2xtbm9w"
JWS = f"{HEADER_PAYLOAD}.{HANDLE}"
REFRESH_HANDLE = "cmVmcmVzaC1oYW5kbGUtb2YtdGhlLWNsaWVudC0wMTIzNDU2Nzg5"
REFRESH_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJ0eXAiOiJSZWZyZXNoIn0.a2V5Y2xvYWstcmVmcmVzaC1zaWduYXR1cmU"
SECRETS = (JWS, HEADER_PAYLOAD, HANDLE, REFRESH_HANDLE, REFRESH_TOKEN, "alice@example.com")
CLIENT = ("192.0.2.7", 50123)


def test_handle_id_is_stable_domain_separated_and_not_the_handle() -> None:
    hid = handle_id(HANDLE)
    # Pinned: ids must stay comparable across versions and proxies; an operator can compute one with
    # printf 'splittoken audit handle id v1\0%s' "$handle" | sha256sum | cut -c1-32
    assert hid == "3a28dc2911cc01f0de4c15225a46cbf8"
    assert handle_id(HANDLE) == hid
    assert re.fullmatch(r"[0-9a-f]{32}", hid)
    assert not HANDLE.startswith(hid)
    assert HANDLE[:8] not in hid
    assert not seal.store_key(HANDLE).startswith(hid)
    assert hid not in seal.store_key(HANDLE)
    assert handle_id(HANDLE + "A") != hid
    assert handle_id(REFRESH_HANDLE) != hid


@pytest.mark.parametrize(
    ("event", "fields", "problem"),
    [
        (Event.JOIN, {"handle_id": HANDLE}, "handle_id must be the output of handle_id"),
        (Event.JOIN, {"handle_id": JWS}, "handle_id must be the output of handle_id"),
        (Event.JOIN, {"handle_id": handle_id(HANDLE).upper()}, "handle_id must be"),
        (Event.SPLIT, {"refresh_handle_id": REFRESH_HANDLE}, "refresh_handle_id must be"),
        (Event.REFRESH, {"old_handle_id": REFRESH_TOKEN}, "old_handle_id must be"),
        (Event.REFRESH, {"new_handle_id": 12345}, "new_handle_id must be"),
        (Event.JOIN, {"sub": JWS}, "sub looks like a JWS"),
        (Event.JOIN, {"sub": f"user {REFRESH_TOKEN}"}, "sub looks like a JWS"),
        (Event.JOIN, {"sub": "eyJhbGciOiJub25lIn0.e30."}, "sub looks like a JWS"),
        (Event.JOIN, {"sub": "x" * 256}, "at most 255"),
        (Event.JOIN, {"sub": "alice\nforged line"}, "printable"),
        (Event.JOIN, {"sub": 42}, "printable"),
        (Event.JOIN, {"client": (HANDLE, 443)}, "socket address"),
        (Event.JOIN, {"client": ("api.example.com", 443)}, "socket address"),
        (Event.JOIN, {"client": ("192.0.2.7", "443")}, "socket address"),
        (Event.JOIN, {"client": ("192.0.2.7", 70000)}, "socket address"),
        (Event.JOIN, {"client": (3232235777, 443)}, "socket address"),
        (Event.JOIN, {"client": ("192.0.2.7",)}, "socket address"),
        (Event.JOIN, {"reason": Reason.DPOP}, "reason is required for a refuse event"),
        (Event.REFUSE, {}, "reason is required for a refuse event"),
        (Event.JOIN, {"old_handle_id": handle_id(HANDLE)}, "belong to a refresh"),
        (JWS, {}, "event must be one of"),
        ("login", {}, "event must be one of"),
    ],
)
def test_fields_that_could_carry_a_secret_are_refused(
    tmp_path: Path, event: str, fields: dict[str, Any], problem: str
) -> None:
    path = tmp_path / "audit.log"
    trail = AuditTrail(path)
    with pytest.raises(ValueError, match=problem) as refused:
        trail.record(event, **fields)
    assert trail.close()
    assert path.read_bytes() == b""
    assert trail.dropped == 0
    for secret in SECRETS:
        assert secret not in str(refused.value)


def test_unknown_fields_are_refused(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.log")
    with pytest.raises(TypeError):
        trail.record(Event.JOIN, access_token=JWS)  # type: ignore[call-arg]
    assert trail.close()


def test_no_secret_in_any_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    trail = AuditTrail(path)
    access, refresh = handle_id(HANDLE), handle_id(REFRESH_HANDLE)
    trail.record(Event.SPLIT, handle_id=access, refresh_handle_id=refresh, sub="alice", client=CLIENT)
    trail.record(Event.JOIN, handle_id=access, sub="alice", client=CLIENT)
    trail.record(Event.REFUSE, handle_id=handle_id(JWS), reason=JWS, client=CLIENT)
    trail.record(Event.REFUSE, reason=f"unknown handle {HANDLE}")
    trail.record(Event.REFRESH, handle_id=access, old_handle_id=refresh, new_handle_id=handle_id("n"))
    trail.record(Event.REVOKE, handle_id=refresh)
    assert trail.close()
    text = path.read_text()
    assert len(text.splitlines()) == 6
    for secret in SECRETS:
        for piece in (secret, secret[:8], secret[-8:], *secret.split(".")):
            assert piece not in text


def test_reason_outside_the_set_is_other() -> None:
    assert Reason("dpop") is Reason.DPOP
    assert Reason(JWS) is Reason.OTHER
    assert Reason("") is Reason.OTHER


def test_a_sub_refused_once_is_refused_every_time_and_a_good_one_every_time_written(tmp_path: Path) -> None:
    """The check and encoding of a sub are cached: only for subs that pass."""
    path = tmp_path / "audit.log"
    trail = AuditTrail(path)
    for _ in range(3):
        with pytest.raises(ValueError, match="sub looks like a JWS"):
            trail.record(Event.JOIN, sub=JWS)
        assert trail.record(Event.JOIN, sub='al"ice\\')
    assert trail.close()
    assert [json.loads(line)["sub"] for line in path.read_text().splitlines()] == ['al"ice\\'] * 3
