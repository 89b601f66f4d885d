"""Protocol decisions: what a request presents, what a token response holds, and the RFC error answers.

Pure: no I/O, no mitmproxy. The shell (addon.py) turns a Refusal into an HTTP response.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import jws
from .audit import Reason

# RFC 6750 §2.1: b64token. Handles are base64url; anything else is a malformed request.
_HANDLE = re.compile(r"[A-Za-z0-9_-]+")
_BEARER = re.compile(r"Bearer +(\S+) *", re.IGNORECASE)
# Longest signature of a standard JWS algorithm: RS512 with an 8192-bit key is 1366 characters.
MAX_HANDLE_LENGTH = 2048


# ---------------------------------------------------------------------------------------------------------
# Error answers


@dataclass(frozen=True)
class Refusal:
    """An answer the proxy gives itself instead of forwarding: RFC 6749 §5.2 / RFC 6750 §3 shaped."""

    status: int
    error: str | None
    description: str
    headers: tuple[tuple[str, str], ...] = ()
    reason: Reason = Reason.OTHER  # what metrics and the audit trail call it: no free text there

    def body(self) -> bytes:
        answer = {"error": self.error} if self.error else {}
        answer["error_description"] = self.description
        return json.dumps(answer).encode()


def _quoted(text: str) -> str:
    # RFC 6750 §3: error_description is a quoted-string of printable ASCII without '"' and '\'.
    return "".join(c for c in text if 0x20 <= ord(c) <= 0x7E and c not in '"\\')


def _bearer_challenge(error: str | None = None, description: str = "") -> tuple[str, str]:
    if error is None:
        return ("WWW-Authenticate", 'Bearer realm="splittoken"')
    return (
        "WWW-Authenticate",
        f'Bearer realm="splittoken", error="{error}", error_description="{_quoted(description)}"',
    )


def missing_credentials() -> Refusal:
    # RFC 6750 §3.1: a request with no authentication information gets a challenge without an error code.
    return Refusal(401, None, "authentication required", (_bearer_challenge(),), Reason.MISSING)


def invalid_token(description: str, reason: Reason = Reason.UNKNOWN_HANDLE) -> Refusal:
    challenge = _bearer_challenge("invalid_token", description)
    return Refusal(401, "invalid_token", description, (challenge,), reason)


def invalid_request(description: str, reason: Reason = Reason.MALFORMED) -> Refusal:
    challenge = _bearer_challenge("invalid_request", description)
    return Refusal(400, "invalid_request", description, (challenge,), reason)


def invalid_grant(description: str) -> Refusal:
    return Refusal(400, "invalid_grant", description, reason=Reason.INVALID_GRANT)


def invalid_dpop_proof(description: str, error: str = "invalid_dpop_proof") -> Refusal:
    # RFC 9449 §5: a token request's proof is refused as any token request error is (RFC 6749 §5.2); error is
    # use_dpop_nonce when it lacks the server's nonce (§8).
    return Refusal(400, error, description, reason=Reason.DPOP)


def dpop_refused(error: str, description: str, algorithms: Iterable[str]) -> Refusal:
    """An API call with a DPoP-bound handle refused (RFC 9449 §7.1): ``error`` is invalid_dpop_proof (the
    proof), invalid_token (the handle, or a bound one presented as Bearer) or use_dpop_nonce; ``algs`` tells
    the client which proof algorithms are accepted."""
    algs = " ".join(algorithms)
    challenge = f'DPoP error="{error}", error_description="{_quoted(description)}", algs="{algs}"'
    return Refusal(401, error, description, (("WWW-Authenticate", challenge),), Reason.DPOP)


def store_unavailable(retry_after: int = 5) -> Refusal:
    return Refusal(
        503, "temporarily_unavailable", "token store unavailable, try again later",
        (("Retry-After", str(retry_after)),), Reason.STORE_UNAVAILABLE,
    )  # fmt: skip


# Every guarded hook names it as its error: made once, not per request.
STORE_UNAVAILABLE = store_unavailable()


def bad_gateway(description: str) -> Refusal:
    # The authorization server answered with something the proxy will not hand on (RFC 9110 §15.6.3).
    description = f"authorization server response refused: {description}"
    return Refusal(502, "server_error", description, reason=Reason.BAD_GATEWAY)


def api_response_refused(description: str) -> Refusal:
    # The API answered with the JWT the proxy put in, in a form the proxy cannot take out.
    return Refusal(502, "server_error", f"API response refused: {description}", reason=Reason.API_RESPONSE)


# ---------------------------------------------------------------------------------------------------------
# What a client presents on an API route


@dataclass(frozen=True)
class Presented:
    credential: str
    is_jwt: bool  # a full JWT rather than a handle: only honoured when client JWTs are allowed


def read_authorization(values: Sequence[str]) -> Presented | Refusal:
    """Read the Authorization header(s) of an API request: ``Bearer <handle>`` or a bare ``<handle>``."""
    if not values:
        return missing_credentials()
    if len(values) > 1:
        return invalid_request("more than one Authorization header")
    value = values[0].strip(" \t")
    if not value:
        return invalid_request("empty Authorization header")
    if value.lower() == "bearer":  # the scheme without its credential, not a handle named "Bearer"
        return invalid_request("Bearer without a credential")
    if " " in value or "\t" in value:
        m = _BEARER.fullmatch(value)
        if not m:
            return invalid_request("unsupported authorization scheme, expected Bearer")
        value = m.group(1)
    if not value.isascii():
        return invalid_request("malformed credential")
    if jws.has_compact_shape(value):
        # Claim sets may be large; a signature no standard algorithm makes is not a JWT.
        if len(value.rpartition(".")[2]) > MAX_HANDLE_LENGTH:
            return invalid_request("malformed credential")
        return Presented(value, is_jwt=True)
    if len(value) > MAX_HANDLE_LENGTH or not _HANDLE.fullmatch(value):
        return invalid_request("malformed credential: a handle is base64url")
    return Presented(value, is_jwt=False)


def read_handle(value: object) -> str | None:
    """A handle from a form or JSON field (refresh_token, token), or None when it cannot be one."""
    if isinstance(value, str) and len(value) <= MAX_HANDLE_LENGTH and _HANDLE.fullmatch(value):
        return value
    return None


# ---------------------------------------------------------------------------------------------------------
# Client authentication at the token endpoint


_CLIENT_CREDENTIALS = ("client_id", "client_secret", "client_assertion_type", "client_assertion")


def client_authentication(authorization: str, fields: Mapping[str, Any]) -> str:
    """Who a token request says its client is, and how it proves it: the client id and a digest of every
    credential it presents (HTTP Basic, ``client_secret``: RFC 6749 §2.3.1; ``client_assertion``: RFC 7523).
    Two requests with the same value authenticate the same way; it holds a digest, never the credentials.
    A client_assertion is single-use (its ``jti``), so only a request repeating the very same one matches."""
    client_id = fields.get("client_id")
    client_id = client_id if isinstance(client_id, str) else ""
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() == "basic":
        try:
            user = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            user = ""
        client_id = urllib.parse.unquote_plus(user) or client_id
    presented = [authorization.strip(), *(fields.get(name) for name in _CLIENT_CREDENTIALS)]
    digest = hashlib.sha256(json.dumps(presented).encode()).hexdigest()
    return f"{client_id}#{digest}"


# ---------------------------------------------------------------------------------------------------------
# Lifetimes


def number(value: object) -> float | None:
    """A finite non-negative number from a JSON or form field (expires_in may arrive as a string)."""
    if isinstance(value, str):
        try:
            value = float(value) if len(value) < 32 else None
        except ValueError:
            return None
    if not jws.is_json_number(value):
        return None
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except OverflowError:  # an int beyond float range is no usable lifetime
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def expiry(now: float, *, exp: object = None, expires_in: object = None, max_ttl: float) -> float:
    """When a record must die: the token's own ``exp``, else ``expires_in``, never later than ``max_ttl``."""
    cap = now + max_ttl
    absolute = number(exp)
    if absolute is not None:
        return min(absolute, cap)
    relative = number(expires_in)
    if relative is not None:
        return min(now + relative, cap)
    return cap
