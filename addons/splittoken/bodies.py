"""Token endpoint bodies (requests and responses), read as clients and servers read them: a JSON object or a
form, and the Content-Encoding undone within a bound.

Pure: no I/O, no mitmproxy. messages.py reads them off mitmproxy's messages.
"""

from __future__ import annotations

import json
import urllib.parse
import zlib
from dataclasses import dataclass
from typing import Any

from .errors import TooLarge, Unparseable


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which duplicate wins; a body that could mean two things is refused.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise Unparseable("duplicate member")
    return obj


@dataclass
class TokenBody:
    """The fields of a token endpoint body, and how to write them back the same way."""

    fields: dict[str, Any]
    form: bool = False

    @classmethod
    def parse(cls, content_type: str, raw: bytes) -> TokenBody:
        """Raises Unparseable for anything that is not a JSON object or a form."""
        ctype = content_type.split(";", 1)[0].strip().lower()
        try:
            # utf-8-sig: clients' JSON readers skip a byte-order mark, so the proxy must read past it too.
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise Unparseable("not UTF-8") from None
        if "\x00" in text:
            # UTF-16/32 text decodes as "UTF-8" full of NULs, and would pass for a one-field form whose
            # NUL-spaced contents no scan can read; neither a JSON nor a form body ever holds a raw NUL.
            raise Unparseable("NUL byte in body (UTF-16/32?)")
        # A body that reads as JSON is read as JSON whatever its type says: a client's JSON reader does, and a
        # JSON body holding "=" would pass for a one-field form that no field check sees into.
        if "json" not in ctype and not text.lstrip().startswith(("{", "[")):
            try:
                pairs = urllib.parse.parse_qsl(
                    text, keep_blank_values=True, strict_parsing=bool(text), errors="strict"
                )
            except (ValueError, UnicodeDecodeError):
                raise Unparseable("malformed form body") from None
            fields: dict[str, Any] = {}
            for k, v in pairs:
                if k in fields:
                    raise Unparseable("duplicate parameter")  # RFC 6749 §3.1: MUST NOT be repeated
                fields[k] = v
            return cls(fields, form=True)
        try:
            obj = json.loads(text, object_pairs_hook=_no_duplicates)
        except Unparseable:
            raise  # a duplicate member: keep the reason (Unparseable is a ValueError too)
        except (ValueError, RecursionError) as e:
            raise Unparseable(f"malformed JSON: {type(e).__name__}") from None
        if not isinstance(obj, dict):
            raise Unparseable("JSON body is not an object")
        return cls(obj)

    def render(self) -> bytes:
        if self.form:
            return urllib.parse.urlencode(list(self.fields.items())).encode()
        return json.dumps(self.fields).encode()


# zlib window bits: 16 + 15 for a gzip wrapper, 15 for zlib (what HTTP calls "deflate").
_ZLIB_WBITS = {"gzip": 31, "x-gzip": 31, "deflate": 15}


def decode_body(raw: bytes, content_encoding: str, limit: int) -> bytes:
    """A response body without its Content-Encoding, never inflated past ``limit`` bytes (a zip bomb stops
    at the limit instead of filling memory). Raises TooLarge, or Unparseable for an encoding it cannot
    bound (the proxy asks for identity, so a compliant server never sends one)."""
    if len(raw) > limit:
        raise TooLarge("body too large")
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding not in _ZLIB_WBITS:
        raise Unparseable(f"unsupported Content-Encoding {encoding[:20]!r}")
    inflater = zlib.decompressobj(_ZLIB_WBITS[encoding])
    try:
        body = inflater.decompress(raw, limit + 1)
    except zlib.error:
        raise Unparseable("broken Content-Encoding") from None
    if len(body) > limit:
        raise TooLarge("body too large once decoded")
    if not inflater.eof:
        raise Unparseable("truncated Content-Encoding")
    if inflater.unused_data:
        # A second gzip member (or anything) after the first: clients that read every member (Python's gzip,
        # urllib3) would see more than was judged here, e.g. the rest of a string holding a JWS.
        raise Unparseable("data after the end of the Content-Encoding")
    return body
