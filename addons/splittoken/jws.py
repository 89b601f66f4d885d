"""Compact JWS (RFC 7515 §7.1): recognise, split, inspect and re-join.

Pure: no I/O, no mitmproxy. The proxy keeps ``header.payload`` and hands out the signature as the handle;
``join`` puts the original token back together byte for byte.
"""

from __future__ import annotations

import binascii
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

# Asymmetric and HMAC JWS algorithms (RFC 7518, RFC 8037). "none" is never acceptable.
DEFAULT_ALGORITHMS: tuple[str, ...] = (
    "RS256", "RS384", "RS512",
    "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "ES256K",
    "EdDSA",
    "HS256", "HS384", "HS512",
)  # fmt: skip

_B64URL = r"[A-Za-z0-9_-]"
# Signature may be empty in the shape so that an unsigned token is recognised, then refused.
_COMPACT_SHAPE = re.compile(rf"{_B64URL}+\.{_B64URL}+\.{_B64URL}*")
# Runs of characters that can make up a compact serialization; used to find tokens inside any text.
_TOKEN_RUN = re.compile(r"[A-Za-z0-9_.-]+")


class TokenRefused(ValueError):
    """The token must not be handed on. The message is safe to log and to send: it never holds the token."""


@dataclass(frozen=True)
class SplitJWS:
    """A compact JWS taken apart: what the proxy keeps, and the handle the client gets."""

    signing_input: str  # "header.payload", ASCII, exactly as issued
    signature: str  # the handle
    header: Mapping[str, Any]
    claims: Mapping[str, Any]

    def join(self) -> str:
        return join(self.signing_input, self.signature)


def join(signing_input: str, signature: str) -> str:
    return f"{signing_input}.{signature}"


def _b64_starts_json_object(segment: str) -> bool:
    """Whether a base64url segment decodes to something that opens a JSON object.

    Only a short prefix is decoded, so scanning stays linear in the text scanned.
    """
    prefix = segment[:16]
    prefix = prefix[: len(prefix) - len(prefix) % 4]
    if not prefix:
        return False
    try:
        raw = binascii.a2b_base64(prefix.replace("-", "+").replace("_", "/"), strict_mode=True)
    except (binascii.Error, ValueError):
        return False
    return raw.lstrip(b" \t\r\n").startswith(b"{")


def has_compact_shape(value: str) -> bool:
    """Three base64url segments whose first opens a JSON object: what a JWS (and so a JWT) looks like."""
    return bool(_COMPACT_SHAPE.fullmatch(value)) and _b64_starts_json_object(value)


def _is_jwe_header(segment: str) -> bool:
    try:
        header = json.loads(jwt.utils.base64url_decode(segment))
    except (ValueError, binascii.Error):
        return False
    return isinstance(header, dict) and "enc" in header


def find_jws(text: str) -> Iterator[str]:
    """Yield every compact JWS hidden anywhere in ``text`` (linear time).

    A 5-part JWE is encrypted and so not leaky; any other run that holds two consecutive segments opening
    JSON objects followed by a third is treated as a JWS, so that prefixes or suffixes cannot smuggle one out.
    """
    for run in _TOKEN_RUN.finditer(text):
        segments = run.group().split(".")
        if len(segments) < 3:
            continue
        if len(segments) == 5 and _is_jwe_header(segments[0]):
            continue
        for i in range(len(segments) - 2):
            header, payload = segments[i], segments[i + 1]
            if _b64_starts_json_object(header) and _b64_starts_json_object(payload):
                yield ".".join(segments[i : i + 3])


def inspect(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a compact JWS, unverified; for display. Raises TokenRefused when unreadable."""
    if not _COMPACT_SHAPE.fullmatch(token):
        raise TokenRefused("not a compact JWS")
    try:
        # Signature verification is the API's job (or the JWKS check's); here we only read.
        decoded = jwt.api_jwt.decode_complete(token, options={"verify_signature": False})
    except jwt.PyJWTError as e:
        raise TokenRefused(f"unreadable JWS: {type(e).__name__}") from None
    return dict(decoded["header"]), dict(decoded["payload"])


def split(
    token: str,
    *,
    algorithms: tuple[str, ...] | frozenset[str],
    now: float,
    leeway: float = 0,
) -> SplitJWS:
    """Check that ``token`` is a well-formed, signed, unexpired JWS and take it apart.

    Raises TokenRefused with a short reason for anything the proxy must not hand on.
    """
    if not _COMPACT_SHAPE.fullmatch(token):
        raise TokenRefused("not a compact JWS")
    signing_input, _, signature = token.rpartition(".")
    if not signature:
        raise TokenRefused("JWS has no signature")
    header, claims = inspect(token)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg.lower() == "none":
        raise TokenRefused("JWS is unsigned (alg none)")
    if alg not in algorithms:
        raise TokenRefused(f"JWS algorithm {alg[:20]!r} is not allowed")
    exp = claims.get("exp")
    if exp is not None:
        if not isinstance(exp, int | float) or isinstance(exp, bool) or not math.isfinite(exp):
            raise TokenRefused("JWS exp claim is not a number")
        if exp + leeway <= now:
            raise TokenRefused("JWS has already expired")
    return SplitJWS(signing_input=signing_input, signature=signature, header=header, claims=claims)
