"""Audit events: one JSON object per line for every event in a handle's life, and never a secret.

A line names a handle only by ``handle_id``, a hash that cannot be turned back into the handle. ``line``
accepts only the fields of its signature, each checked for its type and shape, so that a token, a handle or
a claim other than ``sub`` cannot end up in a line by mistake: every id must look like ``handle_id``'s
output, a reason is one of the fixed ``Reason`` values, a client is an IP address and a port, and a ``sub``
that looks like a JWS is refused. audit_trail.py appends the lines to a file.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import ipaddress
import json
import re
from typing import Any

# A separate domain from seal.store_key (plain SHA-256 of the handle): an audit line, which goes to log
# shippers and people who never see the store, must not double as the key of the handle's sealed record.
_HANDLE_ID_DOMAIN = b"splittoken audit handle id v1\x00"
_HANDLE_ID = re.compile(r"[0-9a-f]{32}")
# A compact JWS or JWE starts with a base64url JSON object ('{"' encodes as "eyJ"), a header of at least
# '{"alg":"…"}' (16 characters in base64url), then a dot.
_JWS_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]{13,}\.")
_MAX_SUB = 255  # OpenID Connect Core 1.0, section 2: sub is at most 255 ASCII characters


class Event(enum.StrEnum):
    SPLIT = "split"
    JOIN = "join"
    REFUSE = "refuse"
    REFRESH = "refresh"
    REVOKE = "revoke"
    INTROSPECT = "introspect"


class Reason(enum.StrEnum):
    """Why the proxy refused a request: the ``reason`` of a refuse line and the label of
    ``splittoken_refusals_total``. A fixed set, so that no free text (let alone a token) can get into
    either; a value outside it becomes ``OTHER``."""

    UNKNOWN_HANDLE = "unknown_handle"  # unknown, expired or revoked handle
    MALFORMED = "malformed"  # an Authorization header that is not one Bearer credential
    MISSING = "missing"  # no credential where one is needed
    CLIENT_JWT = "client_jwt"  # the client presented a full JWT instead of its handle
    DPOP = "dpop"  # a missing or invalid DPoP proof
    STORE_UNAVAILABLE = "store_unavailable"
    BAD_GATEWAY = "bad_gateway"  # an authorization server answer the proxy will not hand on
    INVALID_GRANT = "invalid_grant"  # unknown, expired or revoked refresh handle
    DESTINATION = "destination"  # a handle sent to a host it is not for
    METHOD = "method"  # a method that would echo the token back (TRACE)
    API_RESPONSE = "api_response"  # an API answer quoting the JWT in a form that cannot be rewritten
    TIMEOUT = "timeout"  # waited too long for a refresh of the same handle under way
    INTERNAL = "internal"  # the proxy failed (a bug): the request refused rather than passed as is
    OTHER = "other"

    @classmethod
    def _missing_(cls, value: object) -> Reason:
        return cls.OTHER


def handle_id(handle: str) -> str:
    """A stable id for the audit trail: the same for every event about ``handle``, and neither the handle,
    nor a prefix of it, nor its store key. A handle carries at least 256 bits (a signature or a random
    refresh handle), so its hash cannot be reversed by guessing; 128 bits of it keep ids apart."""
    return hashlib.sha256(_HANDLE_ID_DOMAIN + handle.encode()).hexdigest()[:32]


def line(
    event: Event | str,
    *,
    handle_id: str | None = None,
    sub: str | None = None,
    reason: Reason | str | None = None,
    client: tuple[Any, ...] | None = None,
    refresh_handle_id: str | None = None,
    old_handle_id: str | None = None,
    new_handle_id: str | None = None,
) -> str:
    """The members of one event's line after ``ts``. Raises ValueError for a field that is not what it
    should be (see the module's docstring); ``reason`` is required for a refuse event and only allowed
    there, ``old_handle_id``/``new_handle_id`` only for a refresh."""
    try:
        event = Event(event)
    except ValueError:
        # Enum's own message quotes the value, which must not reach a log if it was a token.
        raise ValueError(f"event must be one of {', '.join(Event)}") from None
    if (reason is None) == (event is Event.REFUSE):
        raise ValueError("reason is required for a refuse event and allowed for no other")
    if (old_handle_id is not None or new_handle_id is not None) and event is not Event.REFRESH:
        raise ValueError("old_handle_id and new_handle_id belong to a refresh event")
    return _members(
        event, handle_id=handle_id, refresh_handle_id=refresh_handle_id, reason=reason,
        old_handle_id=old_handle_id, new_handle_id=new_handle_id, sub=sub, client=client,
    )  # fmt: skip


def _members(
    event: Event, *, handle_id: str | None, refresh_handle_id: str | None, reason: Reason | str | None,
    old_handle_id: str | None, new_handle_id: str | None, sub: str | None, client: tuple[Any, ...] | None,
) -> str:  # fmt: skip
    # The line's members after "ts", joined by hand rather than by json.dumps on the writer: every value
    # but sub is checked to be text that JSON needs no escape for (hex ids, enum values, an address).
    members = f'"event":"{event.value}"'
    if handle_id is not None:
        members += f',"handle_id":"{_checked_id("handle_id", handle_id)}"'
    if refresh_handle_id is not None:
        members += f',"refresh_handle_id":"{_checked_id("refresh_handle_id", refresh_handle_id)}"'
    if reason is not None:
        members += f',"reason":"{Reason(reason).value}"'
    if old_handle_id is not None:
        members += f',"old_handle_id":"{_checked_id("old_handle_id", old_handle_id)}"'
    if new_handle_id is not None:
        members += f',"new_handle_id":"{_checked_id("new_handle_id", new_handle_id)}"'
    if sub is not None:
        members += _sub_member(sub)
    if client is not None:
        members += f',"client":"{_client_address(client)}"'
    return members


def _checked_id(name: str, value: str) -> str:
    if not isinstance(value, str) or not _HANDLE_ID.fullmatch(value):
        raise ValueError(f"{name} must be the output of handle_id(), not a handle or a token")
    return value


def _sub_member(sub: str) -> str:
    if not isinstance(sub, str) or not sub.isprintable() or len(sub) > _MAX_SUB:
        raise ValueError(f"sub must be printable text of at most {_MAX_SUB} characters")
    return _checked_sub_member(sub)


@functools.lru_cache(maxsize=4096)
def _checked_sub_member(sub: str) -> str:
    # Cached: the same few subjects come again and again, and checking and encoding one costs more than the
    # rest of record(). A sub is no secret (it is in every line), so keeping it here is no risk.
    if _JWS_LIKE.search(sub):
        raise ValueError("sub looks like a JWS: pass the sub claim, not a token")
    return f',"sub":{json.dumps(sub)}'


_NOT_AN_ADDRESS = "client must be a socket address (IP address, port)"


def _client_address(client: tuple[Any, ...]) -> str:
    """``host:port`` (``[v6]:port``) from a socket address such as mitmproxy's ``client_conn.peername``;
    only an IP address and a port number pass."""
    if len(client) < 2 or not isinstance(client[0], str) or type(client[1]) is not int:
        raise ValueError(_NOT_AN_ADDRESS)
    return _address(client[0], client[1])


@functools.lru_cache(maxsize=4096)
def _address(host: str, port: int) -> str:
    # Cached: parsing an address costs more than the rest of record(), and a connection sends many requests.
    # The IPv6 scope (fe80::1%eth0) is free text: left out.
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        raise ValueError(_NOT_AN_ADDRESS) from None
    if not 0 <= port <= 65535:
        raise ValueError(_NOT_AN_ADDRESS)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
