"""Leak scans: whether a body or header holds a JWS or a given secret in any form a client could read it.

Pure: no I/O, no mitmproxy. A client parses JSON, percent-decodes, detects UTF-16: a scan that reads the
text only as it stands would miss a token behind an escape, so every reading is tried.
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.parse
from collections.abc import Iterable, Iterator
from typing import Any

from . import jws

_JSON_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})|\\(.)")


_JSON_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


def _unescape(m: re.Match[str]) -> str:
    return chr(int(m[1], 16)) if m[1] else _JSON_ESCAPES.get(m[2], m[2])


def readings(raw: bytes) -> Iterator[str]:
    """The ways a client might read a body that could not be parsed: as UTF-8, in the Unicode encoding a
    JSON parser would detect, with JSON string escapes undone, and percent-decoded. A JWS hidden behind an
    escape, a duplicate member or a UTF-16 encoding is still found in one of them."""
    texts = [raw.decode("utf-8", "replace")]
    detected = json.detect_encoding(raw)
    if detected != "utf-8":
        texts.append(raw.decode(detected, "replace"))
    for text in texts:
        yield from _unescaped(text)


def text_holds_jws(text: str) -> bool:
    """Whether a text (a header value, a field), its escapes undone, holds a compact JWS."""
    return any(True for reading in _unescaped(text) for _ in jws.find_jws(reading))


def header_problem(headers: Iterable[tuple[str, str]]) -> str | None:
    """Why an authorization server's answer headers must not reach the client: a JWS (but a redirect's
    ``id_token`` parameter), or a refresh token named, since an opaque one is known by its name only and none
    belongs in a header (a Location's fragment, a cookie, a link). None when they may."""
    for name, value in headers:
        if redirect_holds_jws(value) if name.lower() == "location" else text_holds_jws(value):
            return "a JWS in a response header"
        if names_a_refresh_token(value):
            return "a refresh token in a response header"
    return None


# A refresh token given a value: a parameter (refresh_token=…) or a JSON member ("refresh_token": …). Prose
# naming one ("Missing parameter: refresh_token", "invalid refresh_token") gives none.
_REFRESH_TOKEN_VALUE = re.compile(r"""refresh_token["']?\s*[:=]""", re.IGNORECASE)


def quotes_the_wire(message: str) -> bool:
    """Whether an error message of mitmproxy's quotes bytes it received (``b'…'``, ``bytearray(b'…')``,
    as it does for a line it cannot parse), or a JWS or refresh token in any form."""
    return "b'" in message or 'b"' in message or text_holds_jws(message) or names_a_refresh_token(message)


def names_a_refresh_token(text: str) -> bool:
    """Whether a text, its escapes undone, gives a refresh token a value where none belongs: an opaque one is
    known by its name alone."""
    return any(_REFRESH_TOKEN_VALUE.search(reading) for reading in _unescaped(text))


def holds_jws(raw: bytes) -> bool:
    """Whether a body, read any way a client might read it, holds a compact JWS."""
    return any(True for text in readings(raw) for _ in jws.find_jws(text))


def hands_out_token(locations: Iterable[str], body: bytes) -> bool:
    """Whether an authorization endpoint's answer carries a token out of the front channel (the implicit
    grant, hybrid flows): a JWS in a redirect's query or fragment other than an ``id_token`` parameter's
    (the client's to read), or a page (form_post, web_message) naming an access or refresh token beside a
    JWS."""
    if any(redirect_holds_jws(location) for location in locations):
        return True
    return holds_jws(body) and any(name in text for text in readings(body) for name in _TOKEN_NAMES)


_TOKEN_NAMES = ("access_token", "refresh_token")


# An HTML input named id_token (OIDC form_post), whatever the order of its attributes.
_ID_TOKEN_INPUT = re.compile(rb"""<input\b[^>]*\bname\s*=\s*["']?id_token\b[^>]*>""", re.IGNORECASE)


def page_holds_jws(raw: bytes) -> bool:
    """Whether an authorization server's page holds a JWS other than a form_post ``id_token`` input's."""
    return holds_jws(_ID_TOKEN_INPUT.sub(b"", raw))


def redirect_holds_jws(location: str) -> bool:
    """Whether a redirect holds a JWS other than an ``id_token`` parameter's (OIDC hybrid flows)."""
    return text_holds_jws(_without_id_tokens(location))


def _without_id_tokens(location: str) -> str:
    """The redirect with its ``id_token`` parameters left out, in the query and in the fragment."""
    rest, hash_, fragment = location.partition("#")
    base, question, query = rest.partition("?")

    def kept(params: str) -> str:
        pairs = urllib.parse.parse_qsl(params, keep_blank_values=True)
        return urllib.parse.urlencode([(k, v) for k, v in pairs if k != "id_token"])

    return f"{base}{question}{kept(query)}{hash_}{kept(fragment)}"


def strings_in(value: Any) -> Iterator[str]:
    """Every string (keys included) in a parsed JSON value; iterative, so depth cannot exhaust the stack."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def leaked_jws(fields: dict[str, Any], *, allowed: str | None) -> bool:
    """Whether any value still holds a compact JWS, other than the one ``allowed`` (the OIDC id_token).

    A value may itself be encoded text (JSON or a query string inside a field): its escapes are undone too,
    so that ``\\u0000eyJ…`` or ``%3AeyJ…`` does not glue the token's first segment to the escape.
    """
    return _json_serialized_jws(fields) or any(
        found != allowed
        for text in strings_in(fields)
        for reading in _unescaped(text)
        for found in jws.find_jws(reading)
    )


def _json_serialized_jws(value: Any) -> bool:
    """Whether a parsed JSON value holds a JWS in its JSON serialization (RFC 7515 §7.2: flattened or
    general), as an object or as a string holding one: its claims are readable, and the compact JWS is
    ``protected.payload.signature``."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and '"payload"' in item:
            with contextlib.suppress(ValueError, RecursionError):
                stack.append(json.loads(item))
        elif isinstance(item, dict):
            if isinstance(item.get("payload"), str) and ("signature" in item or "signatures" in item):
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _unescaped(text: str) -> Iterator[str]:
    yield text
    unescaped = _JSON_ESCAPE.sub(_unescape, text) if "\\" in text else text
    if unescaped != text:
        yield unescaped
    # Percent-decoded as is, and once its JSON escapes are undone: a URL in a JSON string (\u0025 is "%").
    for reading in dict.fromkeys((text, unescaped)):
        if "%" in reading or "+" in reading:
            yield urllib.parse.unquote_plus(reading)


def quotes(message: bytes | str, secret: str) -> bool:
    """Whether a body or header value holds ``secret`` in a form a client could read: as is, JSON-escaped
    (``\\u`` escapes included), percent-encoded, or one inside the other; a body in any Unicode encoding a
    JSON parser would detect."""
    texts = readings(message) if isinstance(message, bytes) else _unescaped(message)
    return any(secret in reading for text in texts for reading in _unescaped(text))


def scrubbed(raw: bytes, headers: Iterable[str], secret: str, handle: str) -> bytes | None:
    """An answer's body with ``secret``, a real token the proxy put into the request, replaced by ``handle``
    wherever it stands as is; None when the answer still holds it in a form a client could read (escaped,
    percent-encoded, in a header), and must be refused."""
    clean = raw.replace(secret.encode(), handle.encode())
    if quotes(clean, secret) or any(quotes(value, secret) for value in headers):
        return None
    return clean
