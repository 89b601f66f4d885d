"""Sealed records: what the store holds is useless without the handle.

The store key is SHA-256 of the handle; the value is the record sealed with AES-256-GCM under a key derived
from the handle with HKDF-SHA256, the store key as associated data. Whoever copies the store learns neither
tokens, nor claims, nor handles, and a record moved under another key fails to open.

Pure: no I/O, no mitmproxy.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import SealBroken

_VERSION = b"\x01"
_HKDF_INFO = b"splittoken seal v1"
_NONCE_BYTES = 12

# access: secret is "header.payload" of the JWT whose signature is the handle.
# refresh: secret is the real refresh token.
# rotated: a refresh handle just replaced by rotation; secret is the answer the rotation got (it holds the
#          successor's refresh handle), replayed to late or concurrent refreshes of the same client within the
#          grace period.
RecordKind = Literal["access", "refresh", "rotated"]


@dataclass(frozen=True)
class Record:
    kind: RecordKind
    secret: str
    expires_at: float  # seconds since the epoch
    subject: str = ""  # "sub" claim, for annotations and administration; sealed like the rest
    # URL (origin and normalised path) of the token endpoint that issued the token: a refresh carrying this
    # handle is swapped only on its way back there, a revocation or introspection only beside it.
    issuer: str = ""
    # rotated: the client authentication (policy.client_authentication) of the refresh that rotated it, the
    # only one its answer is replayed to, and the real refresh token the handle stood for, which any other
    # request carries to the authorization server for its verdict. Empty in records older than these fields.
    client: str = ""
    refresh_token: str = ""
    # The RFC 7638 thumbprint of the DPoP key the handle is bound to (RFC 9449): the handle works only beside
    # a proof signed by that key. Empty: a bearer handle, as every record older than the field.
    jkt: str = ""

    def expired(self, now: float, leeway: float = 0) -> bool:
        return self.expires_at + leeway <= now

    def real_token(self, handle: str) -> str:
        """The token the authorization server issued for ``handle`` (access: the JWT it was cut from;
        rotated: the refresh token it replaced, empty in older records)."""
        if self.kind == "access":
            return f"{self.secret}.{handle}"
        return self.refresh_token if self.kind == "rotated" else self.secret


def store_key(handle: str) -> str:
    return hashlib.sha256(handle.encode()).hexdigest()


def _aead(handle: str) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(handle.encode())
    return AESGCM(key)


def seal(handle: str, record: Record) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    plaintext = json.dumps(asdict(record), separators=(",", ":")).encode()
    aad = _VERSION + store_key(handle).encode()
    return _VERSION + nonce + _aead(handle).encrypt(nonce, plaintext, aad)


def open_sealed(handle: str, sealed: bytes) -> Record:
    if sealed[:1] != _VERSION or len(sealed) < 1 + _NONCE_BYTES + 16:
        raise SealBroken("unknown seal format")
    nonce, ciphertext = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
    try:
        plaintext = _aead(handle).decrypt(nonce, ciphertext, _VERSION + store_key(handle).encode())
    except InvalidTag:
        raise SealBroken("seal does not open under this handle") from None
    fields = json.loads(plaintext)
    return Record(**fields)
