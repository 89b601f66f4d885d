"""redaction.py: a real token's spellings replaced by the handle, whole bodies and streams chunk by chunk."""

from __future__ import annotations

import itertools
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oauth_flows import make_jwt
from splittoken import leaks
from splittoken.redaction import Echo, Scanner

TOKEN = make_jwt(email="alice@example.com", pad="p" * 200)
HANDLE = TOKEN.rpartition(".")[2]
CLAIMS = TOKEN.split(".")[1]
CUT_SHORT = TOKEN[: TOKEN.index(".") + 41]  # as an error page quotes a token: 30 bytes of its claims
EXAMPLES = 200 * (20 if os.environ.get("HYPOTHESIS_PROFILE") == "fuzz" else 1)


def spelled(text: str, forms: list[int]) -> str:
    """``text`` with character i written in form ``forms[i % len(forms)]``: as is, \\u00hh, %hh, \\u0025hh."""
    writers = (
        str,
        lambda c: f"\\u{ord(c):04x}",
        lambda c: f"%{ord(c):02X}",
        lambda c: f"\\u0025{ord(c):02x}",
    )
    return "".join(writers[forms[i % len(forms)]](c) for i, c in enumerate(text))


def scanned(echo: Echo, body: bytes, cuts: list[int]) -> tuple[bytes, Scanner]:
    """A body streamed through a scanner, cut into chunks at ``cuts``."""
    scanner = Scanner(echo)
    bounds = [0, *sorted({c % (len(body) + 1) for c in cuts}), len(body)]
    sent = b"".join(scanner.feed(body[a:b]) for a, b in itertools.pairwise(bounds) if b > a)
    return sent + scanner.feed(b"", final=True), scanner


def readable(raw: bytes, secret: str) -> bool:
    return any(secret in reading for reading in leaks.readings(raw))


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    pieces=st.lists(
        st.tuples(
            st.sampled_from(["token", "signing input", "claims", "cut short", "text"]),
            st.lists(st.integers(0, 3), min_size=1, max_size=4),
            st.text(alphabet='ab %\\u0"{}é', max_size=30),
        ),
        max_size=5,
    ),
    cuts=st.lists(st.integers(0, 100_000), max_size=12),
)
def test_every_spelling_goes_whole_or_streamed(
    pieces: list[tuple[str, list[int], str]], cuts: list[int]
) -> None:
    """Any spelling of any piece of the token, between any text, cut into chunks anywhere: the stream sends
    what the whole body becomes, and neither holds a readable piece."""
    texts = {
        "token": TOKEN, "signing input": TOKEN.rpartition(".")[0], "claims": CLAIMS, "cut short": CUT_SHORT,
        "text": "",
    }  # fmt: skip
    body = "".join(spelled(texts[kind], forms) + filler for kind, forms, filler in pieces).encode()
    echo = Echo(TOKEN, HANDLE)
    whole = echo.redact(body)
    assert whole is not None and not readable(whole, CLAIMS)
    sent, scanner = scanned(echo, body, cuts)
    assert sent == whole and not scanner.withheld


@pytest.mark.parametrize("cut", [None, *range(len(TOKEN) - 2, len(TOKEN) + 8)])
def test_an_escape_after_a_backslash_is_no_escape_whole_or_streamed(cut: int | None) -> None:
    """Found by hypothesis: a JSON string reads ``\\u0065`` as a backslash and "u0065", so the claims
    escaped after a backslash are text no client unescapes; the stream must judge them as the whole body
    is judged, wherever the chunks are cut (the backslash in one, the escape in the next)."""
    body = (TOKEN + "\\" + spelled(CLAIMS, [1])).encode()
    echo = Echo(TOKEN, HANDLE)
    whole = echo.redact(body)
    assert whole is not None and whole.startswith(HANDLE.encode() + b"\\\\u00")
    sent, _ = scanned(echo, body, [] if cut is None else [cut])
    assert sent == whole
    escaped = (TOKEN + "\\\\" + spelled(CLAIMS, [1])).encode()  # an even run: the escape is one
    assert echo.redact(escaped) == (HANDLE + "\\\\" + HANDLE).encode()
    assert scanned(echo, escaped, [] if cut is None else [cut])[0] == echo.redact(escaped)


def test_bodies_without_the_token_pass_untouched() -> None:
    body = json.dumps({"items": ["é" * 30, "%41 \\u0041 eyJ"] * 500}).encode()
    echo = Echo(TOKEN, HANDLE)
    assert echo.redact(body) is body
    assert scanned(echo, body, [1000, 5000, 20000])[0] == body


def test_opaque_tokens_are_found_in_every_spelling_too() -> None:
    """A refresh token is opaque, and may hold characters a URL or JSON escapes ('+', '/', '=')."""
    token = "opaque+refresh/token=="
    echo = Echo(token, "HANDLE")
    for forms in ([0], [1], [2], [3], [0, 1, 2, 3]):
        body = f'{{"error": "invalid_grant", "error_description": "bad {spelled(token, forms)}"}}'.encode()
        assert echo.redact(body) == b'{"error": "invalid_grant", "error_description": "bad HANDLE"}', forms


def test_utf16_bodies_are_refused_whole_and_cut_short_streamed() -> None:
    """A JSON parser reads UTF-16 and UTF-32; no byte replacement reaches them."""
    echo = Echo(TOKEN, HANDLE)
    for codec in ("utf-16", "utf-16-be", "utf-32"):
        body = json.dumps({"pad": "x" * 30000, "echo": TOKEN}).encode(codec)
        assert echo.redact(body) is None, codec
        sent, scanner = scanned(echo, body, [4097, 9999, 70001])
        assert scanner.withheld and not readable(sent, CLAIMS), codec
        clean = json.dumps({"pad": "x" * 30000}).encode(codec)
        assert scanned(echo, clean, [4097, 9999])[0] == clean, codec


def test_data_after_what_looked_like_the_end_cannot_finish_a_spelling() -> None:
    """mitmproxy ends a stream with an empty chunk, but an empty HTTP/2 DATA frame looks the same: a
    spelling begun in the tail let out then is no longer rewritable, and the rest is withheld."""
    echo = Echo(TOKEN, HANDLE)
    scanner = Scanner(echo)
    body = b"x" * 10000 + TOKEN.encode()
    split = 10000 + len(TOKEN) // 2
    sent = scanner.feed(body[:split]) + scanner.feed(b"", final=True)
    assert scanner.feed(body[split:]) == b""
    assert scanner.withheld and CLAIMS.encode() not in sent + b""


def test_a_jws_quoted_cut_short_goes_too() -> None:
    """An error page or a log line quoting the start of the JWT shows its claims: the quote goes. Another
    token of the same issuer that begins the same way stays as it is."""
    echo = Echo(TOKEN, HANDLE)
    for quote in (CUT_SHORT, CLAIMS[:40], spelled(CUT_SHORT, [1]), spelled(CUT_SHORT, [0, 2])):
        assert echo.redact(f'{{"error": "invalid token {quote}…"}}'.encode()) == (
            f'{{"error": "invalid token {HANDLE}…"}}'.encode()
        ), quote
    other = make_jwt(email="alice@example.com", pad="q" * 200)
    assert other.split(".")[1][:40] == CLAIMS[:40]  # the same first 30 bytes of claims
    body = json.dumps({"id_token": other, "access": TOKEN}).encode()
    assert echo.redact(body) == json.dumps({"id_token": other, "access": HANDLE}).encode()
