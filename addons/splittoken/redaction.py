"""Echoes of a real token: an answer that repeats the token the proxy put into the request (an API's echo
endpoint, debug header or error page quoting the JWT; an error quoting a refresh token) gets the handle in
its place, in every spelling a client reads: as is, JSON-escaped (``\\u0065``), percent-encoded (``%65``),
or both (``\\u002565``).

Of a JWS, every readable piece of what the proxy keeps back is replaced: the whole token, its signing input
(``header.payload``) and its claims segment; with any of them and the handle a client holds the JWT again.
Streamed answers are scanned chunk by chunk, holding back a tail as long as the longest spelling.

Pure: no I/O, no mitmproxy. Cheap when there is nothing to find: a search for the claims segment and one
for escapes that could spell it, both in C.
"""

from __future__ import annotations

import codecs
import functools
import json
import re

from . import leaks

# Escapes of the characters a compact JWS is made of ('-', '.', digits, letters, '_'): 0x2d to 0x7a. Without
# any, a body can spell a token only as is.
_ESCAPED_TOKEN_CHARACTER = re.compile(rb"%[2-7][0-9a-fA-F]|\\u00[2-7][0-9a-fA-F]")
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
# The longest spelling of one character: \u0025 (a JSON-escaped "%") and two hex digits.
_LONGEST_SPELLING = 8
# Characters of a piece's start that pick the places where a spelling may begin.
_START_LENGTH = 4
_TOKEN_CHARACTERS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
# How far into the claims segment a quote cut short must reach to count (12 bytes of claims): shorter, it
# shows no more than every token of the issuer begins with ({"exp":17…, {"sub":"…).
_CLAIMS_QUOTED = 16


def _hex_pattern(character: int) -> bytes:
    return b"".join(b"[%c%c]" % (d, d ^ 0x20) if d in b"abcdef" else bytes([d]) for d in b"%02x" % character)


def _spelling_pattern(text: bytes) -> bytes:
    """A regex matching ``text`` with each character as itself or escaped (and hex digits in any case)."""
    return b"".join(
        b"(?:%s|\\\\u0025%s|\\\\u00%s|%%%s)" % ((re.escape(bytes([c])),) + (_hex_pattern(c),) * 3)
        for c in text
    )


def _escaped(data: bytes, at: int) -> int:
    """The character two hex digits at ``at`` stand for, or -1."""
    pair = data[at : at + 2]
    return int(pair, 16) if len(pair) == 2 and pair[0] in _HEX_DIGITS and pair[1] in _HEX_DIGITS else -1


def _spelling_at(data: bytes, at: int) -> tuple[int, int]:
    """The character ``data`` spells at ``at`` (as itself, \\u00hh, %hh or \\u0025hh) and its length; (-1, 0)
    at the end."""
    if at >= len(data):
        return -1, 0
    if data.startswith(b"\\u0025", at) and (c := _escaped(data, at + 6)) >= 0:
        return c, 8
    if data.startswith(b"\\u00", at) and (c := _escaped(data, at + 4)) >= 0:
        return c, 6
    if data[at] == 0x25 and (c := _escaped(data, at + 1)) >= 0:  # "%"
        return c, 3
    return data[at], 1


def _after_odd_backslashes(data: bytes, at: int, odd_before: bool) -> bool:
    """Whether ``data[at]`` follows an odd run of backslashes (``odd_before``: ``data`` itself does). A JSON
    string reads ``\\u0065`` as a backslash and ``u0065``: an escape only after an even run is one."""
    i = at
    while i > 0 and data[i - 1] == 0x5C:
        i -= 1
    return bool((at - i + (odd_before if i == 0 else 0)) % 2)


def _spelled(data: bytes, at: int, text: bytes) -> tuple[int, int]:
    """How far ``data`` spells ``text`` from ``at`` on: where it stops, and how many characters it spelled."""
    count = 0
    for c in text:
        spelled, length = _spelling_at(data, at)
        if spelled != c:
            break
        at, count = at + length, count + 1
    return at, count


class Echo:
    """A real token the proxy put into a request (a JWS, or an opaque refresh token), and the handle a
    client may read in its place.

    A JWS quoted cut short (``eyJhbGciOi….eyJzdWIiOiJhbGljZ``, as error pages and logs quote tokens) counts
    once it reaches ``_CLAIMS_QUOTED`` characters into the claims and ends there: a longer run of token
    characters is another token that begins the same way."""

    def __init__(self, token: str, handle: str) -> None:
        self.handle = handle.encode()
        parts = token.split(".")
        if len(parts) == 3:
            header, claims, _ = parts
            quoted = len(header) + 1 + _CLAIMS_QUOTED
            # Longest first: where the whole token is spelled, all of it goes. With each, how much of it a
            # quote cut short must spell to count.
            self._pieces: tuple[tuple[bytes, int], ...] = (
                (token.encode(), quoted), (f"{header}.{claims}".encode(), quoted),
                (claims.encode(), _CLAIMS_QUOTED),
            )  # fmt: skip
            self._secret, self._needle = claims.encode(), claims[:_CLAIMS_QUOTED].encode()
        else:
            self._pieces = ((token.encode(), len(token)),)
            self._secret = self._needle = token.encode()
        self.longest = _LONGEST_SPELLING * len(token)

    def readable(self, data: bytes) -> bool:
        """Whether ``data`` may hold a piece of the token: the start of its claims (of an opaque token, all of
        it) read as is, JSON-unescaped, percent-decoded or as the UTF-16/32 a JSON parser detects."""
        return self._found(self._needle, data)

    def exposes(self, data: bytes) -> bool:
        """Whether a client reads the token's claims (of an opaque token, the token) in ``data``."""
        return self._found(self._secret, data)

    @staticmethod
    def _found(needle: bytes, data: bytes) -> bool:
        if needle in data:
            return True
        escaped = (b"%" in data or b"\\u00" in data) and _ESCAPED_TOKEN_CHARACTER.search(data)
        if not escaped and json.detect_encoding(data).startswith("utf-8"):
            return False
        text = needle.decode()
        return any(text in reading for reading in leaks.readings(data))

    def redact_fields(self, fields: tuple[tuple[bytes, bytes], ...]) -> tuple[tuple[bytes, bytes], ...]:
        """Header (or trailer) fields with the token's spellings replaced; one beyond rewriting goes."""
        values = b"\n".join(value for _, value in fields)
        if self._needle not in values and b"%" not in values and b"\\" not in values:
            return fields  # the common case, in a few microseconds
        redacted = ((name, self.redact(value)) for name, value in fields)
        return tuple((name, value) for name, value in redacted if value is not None)

    def redact(self, data: bytes) -> bytes | None:
        """``data`` with every spelling of a piece of the token replaced by the handle; None when a client
        could still read it (an encoding no byte replacement reaches, such as UTF-16): refuse it then."""
        if not self.readable(data):
            return data
        for piece, _ in self._pieces:
            data = data.replace(piece, self.handle)
        if self.readable(data):  # escaped, cut short, or another token beginning the same way
            out, end = self.rewrite(data, len(data))
            data = bytes(out) + data[end:]
        return None if self.exposes(data) else data

    @functools.cached_property
    def _starts(self) -> re.Pattern[bytes]:
        # Where a piece may begin: a JWS's pieces begin with its header or its claims segment.
        starts = dict.fromkeys(piece[:_START_LENGTH] for piece, _ in self._pieces)
        return re.compile(b"(?=%s)" % b"|".join(_spelling_pattern(start) for start in starts))

    def _spelled_piece(self, data: bytes, start: int) -> int:
        """Where the piece spelled at ``start`` ends, whole or cut short at the end of a quote; else -1."""
        for piece, quoted in self._pieces:
            stop, count = _spelled(data, start, piece)
            if count == len(piece):
                return stop
            if count >= quoted and _spelling_at(data, stop)[0] not in _TOKEN_CHARACTERS:
                return stop
        return -1

    def rewrite(self, data: bytes, decided: int, odd_before: bool = False) -> tuple[bytearray, int]:
        """``data`` up to where its last spelling starting before ``decided`` ends, each spelling replaced by
        the handle; and that end. ``odd_before``: what came before ``data`` ends in an odd run of
        backslashes."""
        out, end = bytearray(), 0
        for match in self._starts.finditer(data):
            start = match.start()
            if start >= decided:
                break
            if start < end or (data[start] == 0x5C and _after_odd_backslashes(data, start, odd_before)):
                continue
            stop = self._spelled_piece(data, start)
            if stop >= 0:
                out += data[end:start]
                out += self.handle
                end = stop
        return out, end


# Byte-order marks of the encodings a JSON parser detects besides UTF-8, longest first (UTF-32-LE's begins
# with UTF-16-LE's), and the codec that reads the rest of the stream.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"),
)  # fmt: skip


def _stream_codec(start: bytes) -> str | None:
    """The UTF-16/32 codec (with its byte order) of a body beginning with ``start``; None for UTF-8."""
    detected = json.detect_encoding(start)
    if detected.startswith("utf-8"):
        return None
    return next((codec for bom, codec in _BOMS if start.startswith(bom)), detected)


class Scanner:
    """A streamed body, chunk by chunk, with the token's spellings replaced. A tail that could begin one is
    held back until the next chunk decides it. When a chunk holds a spelling that cannot be rewritten (in a
    UTF-16 body), the rest of the body is withheld (``withheld``): the shell then cuts the answer short."""

    def __init__(self, echo: Echo) -> None:
        self._echo = echo
        self._tail = b""
        self._flushed = b""  # the tail let out at what looked like the end
        self._codec: str | None = None  # a UTF-16/32 body is read in its own encoding
        self._offset = 0  # bytes of the body before the current buffer, to read UTF-16/32 in step
        self._started = False
        self._odd_backslashes = False  # what was let out ends in an odd run of backslashes
        self.withheld = False

    def _readable(self, data: bytes) -> bool:
        return self._echo.readable(data) or (
            self._codec is not None and self._echo.readable(self._utf8(data))
        )

    def _exposes(self, data: bytes) -> bool:
        return self._echo.exposes(data) or (self._codec is not None and self._echo.exposes(self._utf8(data)))

    def _utf8(self, data: bytes) -> bytes:
        """A UTF-16/32 body's bytes as UTF-8, read in step with the whole body."""
        assert self._codec
        width = 4 if "32" in self._codec else 2
        return data[-self._offset % width :].decode(self._codec, "replace").encode()

    def feed(self, chunk: bytes, final: bool = False) -> bytes:
        echo = self._echo
        if self.withheld:
            return b""
        if self._flushed and chunk:
            # More after what looked like the end (an empty HTTP/2 DATA frame): what was let out cannot be
            # taken back, so a spelling it began ends the answer.
            if echo.readable(self._flushed + chunk[: echo.longest]) and not echo.readable(chunk):
                self.withheld = True
                return b""
            self._flushed = b""
        data = self._tail + chunk
        decided = len(data) if final else len(data) - echo.longest + 1
        if decided <= 0:
            self._tail = data
            return b""
        if not self._started:  # the body's first bytes are all in this buffer
            self._started, self._codec = True, _stream_codec(data)
        keep = decided
        if self._readable(data):
            rewritten, end = echo.rewrite(data, decided, self._odd_backslashes)
            keep = max(end, decided)
            out = bytes(rewritten + data[end:keep])
            if self._exposes(out):
                self.withheld = True
                return b""
        else:
            out = data[:keep]
        self._odd_backslashes = _after_odd_backslashes(data, keep, self._odd_backslashes)
        self._tail = data[keep:]
        self._offset += keep
        if final:
            self._flushed = data[-echo.longest :]
        return out
