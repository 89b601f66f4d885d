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

from .errors import TokenRefused

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


@dataclass(frozen=True)
class SplitJWS:
    """A compact JWS taken apart: what the proxy keeps, and the handle the client gets."""

    signing_input: str  # "header.payload", ASCII, exactly as issued
    signature: str  # the handle
    header: Mapping[str, Any]
    claims: Mapping[str, Any]


def is_json_number(value: object) -> bool:
    """A JSON number as a claim holds it: an int or a finite float, not a bool (True is an int to Python)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return not isinstance(value, float) or math.isfinite(value)


def join(signing_input: str, signature: str) -> str:
    return f"{signing_input}.{signature}"


# What a JSON decoder skips before the first token: JSON whitespace, and the byte-order marks and NUL bytes
# of the UTF-8-sig / UTF-16 / UTF-32 encodings that json.loads (so pyjwt) detects on bytes by itself.
_JSON_LEADING = b" \t\r\n\x00\xef\xbb\xbf\xfe\xff"
# The first base64url character of a segment whose first byte is "{" or one of _JSON_LEADING: a quick "no".
_OPENING_CHARS = frozenset("eICDA7_")


def _b64decode_lenient(segment: str) -> bytes | None:
    """Unpadded base64url as decoders read it; a dangling last character (length 1 mod 4) is dropped."""
    usable = segment[: len(segment) - 1] if len(segment) % 4 == 1 else segment
    padded = usable + "=" * (-len(usable) % 4)
    try:
        return binascii.a2b_base64(padded.replace("-", "+").replace("_", "/"), strict_mode=True)
    except (binascii.Error, ValueError):
        return None


def _b64_starts_json_object(segment: str) -> bool:
    """Whether a base64url segment decodes to something that opens a JSON object.

    The whole segment is decoded (each segment is looked at a bounded number of times, so scanning stays
    linear), so that neither leading whitespace of any length, nor a byte-order mark, nor a short segment
    such as ``e30`` (``{}``) hides a JSON object from the scan.
    """
    if not segment or segment[0] not in _OPENING_CHARS:
        return False
    raw = _b64decode_lenient(segment)
    return raw is not None and raw.lstrip(_JSON_LEADING).startswith(b"{")


def _b64_json_object(segment: str) -> bool:
    """Whether a base64url segment decodes to a whole JSON object (stricter than opening one)."""
    raw = _b64decode_lenient(segment)
    if raw is None:
        return False
    bare = raw.strip(_JSON_LEADING)
    if not (bare.startswith(b"{") and bare.endswith(b"}")):  # a quick "no" before parsing
        return False
    try:
        return isinstance(json.loads(raw), dict)
    except (ValueError, RecursionError):
        return False


_OPENS_MEMBER = re.compile(rb'\{[\s\x00]*"')


def _b64_readable(segment: str) -> bool:
    """Whether a segment decodes to a JSON object, or to the start of one with a member (a claim set cut
    short): either way a reader learns claims from it."""
    if _b64_json_object(segment):
        return True
    raw = _b64decode_lenient(segment)
    return raw is not None and _OPENS_MEMBER.match(raw.lstrip(_JSON_LEADING)[:16]) is not None


def has_compact_shape(value: str) -> bool:
    """Three dot-separated parts whose first is a base64url JSON object: what a JWS (and so a JWT) looks like.

    Loose about the other two on purpose: a malformed JWS (a stray character in its payload) still counts,
    so that the caller refuses it rather than passing its readable parts on as an opaque token. Strict about
    the header, so that a dotted opaque token whose first part merely decodes to "{" is not taken for one.
    """
    return value.count(".") == 2 and _b64_json_object(value.partition(".")[0])


def _is_jwe_header(segment: str) -> bool:
    try:
        header = json.loads(jwt.utils.base64url_decode(segment))
    except (ValueError, binascii.Error, RecursionError):
        return False
    return isinstance(header, dict) and "enc" in header


def find_jws(text: str) -> Iterator[str]:
    """Yield every compact JWS hidden anywhere in ``text`` (linear time).

    A 5-part JWE is encrypted and so not leaky; any other run that holds two consecutive segments opening
    JSON objects followed by a third is treated as a JWS, so that prefixes or suffixes cannot smuggle one out;
    a dotted run any of whose segments is a whole base64url JSON object is readable and found too.
    """
    for run in _TOKEN_RUN.finditer(text):
        segments = run.group().split(".")
        if len(segments) < 2:
            continue
        if len(segments) == 5 and _is_jwe_header(segments[0]):
            # A JWE's other four parts are random bytes: a JWS framed by a JWE-like header in front and one
            # more segment behind would still be a JWS. Whole JSON objects, not random prefixes, give it away.
            for i in (1, 2):
                if _b64_json_object(segments[i]) and _b64_json_object(segments[i + 1]):
                    yield ".".join(segments[i : i + 3])
            continue
        seen: dict[str, bool] = {}  # each distinct segment decoded once
        opens = [
            seen[segment] if segment in seen else seen.setdefault(segment, _b64_starts_json_object(segment))
            for segment in segments
        ]
        found = False
        for i in range(len(segments) - 2):
            if opens[i] and opens[i + 1]:
                found = True
                yield ".".join(segments[i : i + 3])
        # Readable all the same: a payload behind a header that is not JSON, "header.payload" with no
        # signature, a token cut short. Whole JSON objects only, so that dotted names stay what they are.
        if not found and any(_b64_readable(segment) for segment in {s for s, o in seen.items() if o}):
            yield run.group()


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
        if not is_json_number(exp):
            raise TokenRefused("JWS exp claim is not a number")
        # Compared, not added: an int exp beyond float range (valid JSON) must not raise OverflowError.
        if exp <= now - leeway:
            raise TokenRefused("JWS has already expired")
    return SplitJWS(signing_input=signing_input, signature=signature, header=header, claims=claims)
