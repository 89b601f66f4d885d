"""bodies.py: token endpoint bodies (JSON objects and forms) and their Content-Encoding, bounded."""

from __future__ import annotations

import gzip
import json
import time
import zlib

import pytest

from splittoken import bodies
from splittoken.bodies import TokenBody
from splittoken.errors import TooLarge, Unparseable

# -----------------------------------------------------------------------------------------------------------
# TokenBody


def test_parse_json() -> None:
    body = TokenBody.parse("application/json; charset=utf-8", b'{"access_token": "a", "expires_in": 300}')
    assert body.fields == {"access_token": "a", "expires_in": 300}
    assert not body.form
    assert json.loads(body.render()) == body.fields


def test_parse_json_without_content_type() -> None:
    assert TokenBody.parse("", b'  {"a": 1}').fields == {"a": 1}
    assert TokenBody.parse("text/plain", b'{"a": 1}').fields == {"a": 1}
    assert TokenBody.parse("application/vnd.foo+json", b'{"a": 1}').fields == {"a": 1}


def test_parse_form() -> None:
    body = TokenBody.parse(
        "application/x-www-form-urlencoded",
        b"grant_type=refresh_token&refresh_token=abc&scope=a+b%20c&empty=",
    )
    assert body.form
    assert body.fields == {
        "grant_type": "refresh_token",
        "refresh_token": "abc",
        "scope": "a b c",
        "empty": "",
    }
    assert TokenBody.parse("application/x-www-form-urlencoded", body.render()).fields == body.fields


def test_parse_form_without_content_type() -> None:
    body = TokenBody.parse("", b"access_token=abc&token_type=Bearer")
    assert body.form
    assert body.fields["access_token"] == "abc"


def test_parse_empty_form() -> None:
    body = TokenBody.parse("application/x-www-form-urlencoded", b"")
    assert body.form
    assert body.fields == {}


@pytest.mark.parametrize(
    ("ctype", "raw"),
    [
        ("application/json", b'{"access_token": "a", "access_token": "b"}'),
        ("application/json", b'{"x": {"k": 1, "k": 2}}'),
        ("application/x-www-form-urlencoded", b"access_token=a&access_token=b"),
        ("", b"a=1&a=1"),
    ],
)
def test_parse_refuses_duplicates(ctype: str, raw: bytes) -> None:
    with pytest.raises(Unparseable, match="duplicate"):
        TokenBody.parse(ctype, raw)


@pytest.mark.parametrize(
    ("ctype", "raw"),
    [
        ("application/json", b"[1, 2]"),
        ("application/json", b'"string"'),
        ("application/json", b"42"),
        ("application/json", b"null"),
        ("application/json", b""),
        ("application/json", b"{"),
        ("application/json", b'{"a": 1} trailing'),
        ("application/json", b"\xff\xfe{\x00}\x00"),  # UTF-16 is not UTF-8
        ("", '{"a": "b=c"}'.encode("utf-16-be")),  # no BOM: "valid UTF-8" full of NULs, not a form
        ("text/plain", "a=b".encode("utf-16-le")),
        ("application/x-www-form-urlencoded", b"a=b\x00c"),
        ("application/json", b'{"a": "\xc3\x28"}'),
        ("application/x-www-form-urlencoded", b"a=%C3%28"),  # percent-encoded bad UTF-8
        ("application/x-www-form-urlencoded", b"a=%ED%A0%80"),  # percent-encoded surrogate
        ("application/x-www-form-urlencoded", b"\xc3\x28=1"),
        ("application/x-www-form-urlencoded", b"novalue"),
        ("application/x-www-form-urlencoded", b"a=1&&b=2"),
        ("application/x-www-form-urlencoded", b"{"),
        ("", b"[1]"),
        ("text/html", b"<html>hello</html>"),
        ("application/json", b'{"n": 1' + b"0" * 5000 + b"}"),  # beyond Python's int digit limit
        ("application/json", b"[" * 100_000 + b"]" * 100_000),  # RecursionError
        ("application/json", b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
        ("", b"[" * 1_000_000),
    ],
)
def test_parse_refuses_what_is_not_an_object_or_form(ctype: str, raw: bytes) -> None:
    with pytest.raises(Unparseable):
        TokenBody.parse(ctype, raw)


def test_parse_big_but_legal_numbers_round_trip() -> None:
    raw = b'{"n": 1' + b"0" * 4000 + b', "f": 1e400, "g": -1e-400}'
    body = TokenBody.parse("application/json", raw)
    assert body.fields["n"] == 10**4000
    assert body.render()  # re-encodable


def test_parse_then_render_never_raises_at_any_depth() -> None:
    for depth in (10, 100, 500, 999, 1000, 2000, 5000, 20_000):
        raw = b'{"a":' * depth + b"1" + b"}" * depth
        try:
            body = TokenBody.parse("application/json", raw)
        except Unparseable:
            continue
        assert body.render()


def test_render_json_escapes_lone_surrogates() -> None:
    body = TokenBody.parse("application/json", b'{"a": "\\ud800"}')
    assert json.loads(body.render()) == {"a": "\ud800"}


# -----------------------------------------------------------------------------------------------------------
# decode_body: Content-Encoding, never inflated past the limit


def _deflate(data: bytes) -> bytes:
    return zlib.compress(data)


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("", lambda d: d),
        ("identity", lambda d: d),
        ("gzip", gzip.compress),
        ("GZIP ", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", _deflate),
    ],
)
def test_decode_body(encoding: str, encode: object) -> None:
    data = b'{"access_token": "x"}' * 10
    assert bodies.decode_body(encode(data), encoding, limit=len(data)) == data  # type: ignore[operator]
    with pytest.raises(TooLarge):
        bodies.decode_body(encode(data), encoding, limit=len(data) - 1)  # type: ignore[operator]


def test_decode_body_stops_a_zip_bomb_at_the_limit() -> None:
    bomb = gzip.compress(b"\0" * 50_000_000)
    assert len(bomb) < 100_000
    start = time.perf_counter()
    with pytest.raises(TooLarge):
        bodies.decode_body(bomb, "gzip", limit=1024 * 1024)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(
    ("raw", "encoding"),
    [
        (b"not gzip at all", "gzip"),
        (gzip.compress(b"x" * 1000)[:-10], "gzip"),  # truncated
        (zlib.compress(b"x" * 1000)[:-3], "deflate"),
        (gzip.compress(b'{"a": "') + gzip.compress(b'eyJ.eyJ.x"}'), "gzip"),  # two members
        (gzip.compress(b"{}") + b"trailing", "gzip"),
        (zlib.compress(b"{}") + b"x", "deflate"),
        (b"x", "br"),
        (b"x", "compress"),
        (b"x", "gzip, gzip"),
    ],
)
def test_decode_body_refuses_what_it_cannot_bound_or_read(raw: bytes, encoding: str) -> None:
    with pytest.raises(Unparseable):
        bodies.decode_body(raw, encoding, limit=1024 * 1024)


def test_decode_body_refuses_oversize_raw_before_decoding() -> None:
    with pytest.raises(TooLarge):
        bodies.decode_body(b"x" * 101, "", limit=100)
    assert issubclass(TooLarge, ValueError)


def test_a_body_that_reads_as_json_is_json_whatever_its_type_says() -> None:
    """A client's JSON reader ignores Content-Type; read as a form, this body is one field holding it all,
    and the refresh token inside is seen by no field check."""
    raw = b'{"access_token": "a", "refresh_token": "rt-REAL-abc123=="}'
    body = TokenBody.parse("application/x-www-form-urlencoded", raw)
    assert body.fields == {"access_token": "a", "refresh_token": "rt-REAL-abc123=="}
    assert not body.form
