"""policy.py: what a request presents, what a token body holds, lifetimes, and the RFC error answers."""

from __future__ import annotations

import base64
import gzip
import json
import re
import time
import urllib.parse
import zlib
from collections.abc import Callable

import jwt
import pytest

from splittoken import leaks, policy
from splittoken.policy import Presented, Refusal, TokenBody, Unparseable

HANDLE = "dGhpcy1pcy1hLXNpZ25hdHVyZS1oYW5kbGUtb2YtNDMtY2hhcnMx"
JWT = jwt.encode({"sub": "alice", "exp": 1_800_000_000}, b"k" * 32, algorithm="HS256")

# RFC 6750 §3: auth-param values are quoted-strings; error_description holds %x20-21 / %x23-5B / %x5D-7E.
_CHALLENGE = re.compile(
    r'Bearer realm="splittoken"'
    r'(, error="[a-z_]+", error_description="[\x20\x21\x23-\x5b\x5d-\x7e]*")?'
)


def challenge(refusal: Refusal) -> str:
    values = [v for k, v in refusal.headers if k.lower() == "www-authenticate"]
    assert len(values) == 1
    return values[0]


def refused(result: Presented | Refusal, status: int, error: str | None) -> Refusal:
    assert isinstance(result, Refusal), result
    assert result.status == status
    assert result.error == error
    body = json.loads(result.body())
    if error:
        assert body["error"] == error
    else:
        assert "error" not in body
    assert isinstance(body["error_description"], str)
    return result


# -----------------------------------------------------------------------------------------------------------
# read_authorization


@pytest.mark.parametrize(
    "value",
    [
        f"Bearer {HANDLE}",
        f"bearer {HANDLE}",
        f"BEARER {HANDLE}",
        f"bEaReR {HANDLE}",
        f"Bearer   {HANDLE}",
        f"Bearer {HANDLE}  ",
        f"  Bearer {HANDLE}",
        f"\tBearer {HANDLE}\t",
        HANDLE,
        f" {HANDLE} ",
    ],
)
def test_read_authorization_handle(value: str) -> None:
    assert policy.read_authorization([value]) == Presented(HANDLE, is_jwt=False)


@pytest.mark.parametrize("value", [f"Bearer {JWT}", f"bearer {JWT}", JWT])
def test_read_authorization_full_jwt(value: str) -> None:
    assert policy.read_authorization([value]) == Presented(JWT, is_jwt=True)


def test_read_authorization_no_credentials_is_a_challenge_without_error() -> None:
    r = refused(policy.read_authorization([]), 401, None)
    assert challenge(r) == 'Bearer realm="splittoken"'
    assert "error" not in challenge(r)  # RFC 6750 §3.1


def test_read_authorization_several_headers() -> None:
    r = refused(policy.read_authorization([f"Bearer {HANDLE}", f"Bearer {HANDLE}"]), 400, "invalid_request")
    assert _CHALLENGE.fullmatch(challenge(r))
    refused(policy.read_authorization(["", ""]), 400, "invalid_request")


@pytest.mark.parametrize("value", ["", " ", "\t", " \t ", "Bearer", "bearer ", " BEARER  "])
def test_read_authorization_empty(value: str) -> None:
    refused(policy.read_authorization([value]), 400, "invalid_request")


@pytest.mark.parametrize(
    "value",
    [
        "Basic YWxpY2U6c2VjcmV0",
        f"DPoP {HANDLE}",
        f"MAC {HANDLE}",
        f"Token {HANDLE}",
        f"Bearer {HANDLE} extra",
        f"Bearer\t{HANDLE}",
        f"Bearer {HANDLE}\tx",
        f"Bearer {HANDLE}, Bearer {HANDLE}",
        'Digest username="a", realm="b"',
    ],
)
def test_read_authorization_unknown_scheme(value: str) -> None:
    r = refused(policy.read_authorization([value]), 400, "invalid_request")
    assert _CHALLENGE.fullmatch(challenge(r))


@pytest.mark.parametrize(
    "value",
    [
        "Bearer abc+def",
        "Bearer abc/def",
        "Bearer abc=",
        "Bearer abc~def",
        "Bearer a.b",
        "Bearer a.b.c",  # dotted, but not a JWS
        "Bearer ünïcode",
        "Bearer \x00abc",
        "abc\x0bdef",
        "abc\rdef",
        "Bearer " + "a" * (policy.MAX_HANDLE_LENGTH + 1),
        "Bearer " + "a" * 1_000_000,
        "Bearer " + JWT + "x" * 20_000,
        "Bearer é" + HANDLE,
    ],
)
def test_read_authorization_malformed_credential(value: str) -> None:
    refused(policy.read_authorization([value]), 400, "invalid_request")


def test_read_authorization_takes_a_client_jwt_with_a_large_claim_set() -> None:
    large = jwt.encode({"sub": "alice", "pad": "x" * 30_000}, "s" * 32, algorithm="HS256")
    assert policy.read_authorization([f"Bearer {large}"]) == Presented(large, is_jwt=True)


def test_read_authorization_longest_handle() -> None:
    handle = "A" * policy.MAX_HANDLE_LENGTH
    assert policy.read_authorization([f"Bearer {handle}"]) == Presented(handle, is_jwt=False)


# -----------------------------------------------------------------------------------------------------------
# Error answers


HOSTILE = [
    'evil" , error="none',
    "back\\slash",
    "new\r\nline: injected",
    "tab\there\x00nul\x7fdel",
    "unicode ünïcode … \u2028 \ud800",
    "",
    '"' * 50,
]


@pytest.mark.parametrize("description", HOSTILE)
@pytest.mark.parametrize("make", [policy.invalid_token, policy.invalid_request])
def test_challenge_is_well_formed_whatever_the_description(make: object, description: str) -> None:
    r = make(description)  # type: ignore[operator]
    value = challenge(r)
    assert _CHALLENGE.fullmatch(value), value
    assert value.isascii()
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
    # The description itself still reaches the JSON body, properly escaped.
    assert json.loads(r.body())["error_description"] == description


def test_error_answers_have_rfc_statuses() -> None:
    assert policy.invalid_token("x").status == 401
    assert policy.invalid_token("x").error == "invalid_token"
    assert 'error="invalid_token"' in challenge(policy.invalid_token("x"))
    assert policy.invalid_request("x").status == 400
    assert policy.invalid_grant("x").status == 400
    assert policy.invalid_grant("x").error == "invalid_grant"
    assert policy.invalid_grant("x").headers == ()
    unavailable = policy.store_unavailable()
    assert unavailable.status == 503
    assert dict(unavailable.headers)["Retry-After"] == "5"
    assert dict(policy.store_unavailable(7).headers)["Retry-After"] == "7"
    bad = policy.bad_gateway("alg none")
    assert bad.status == 502
    assert json.loads(bad.body()) == {
        "error": "server_error",
        "error_description": "authorization server response refused: alg none",
    }
    assert policy.missing_credentials().status == 401


# -----------------------------------------------------------------------------------------------------------
# read_handle


@pytest.mark.parametrize("value", [HANDLE, "a", "A-_z9"])
def test_read_handle_accepts_base64url(value: str) -> None:
    assert policy.read_handle(value) == value


@pytest.mark.parametrize(
    "value",
    [None, 42, ["x"], {"a": 1}, "", "a.b", "a b", "a+b", "é", "a" * (policy.MAX_HANDLE_LENGTH + 1), JWT],
)
def test_read_handle_refuses_anything_else(value: object) -> None:
    assert policy.read_handle(value) is None


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
# strings_in / leaked_jws


def test_strings_in_walks_keys_values_and_deep_nesting() -> None:
    deep: object = "bottom"
    for _ in range(50_000):
        deep = [deep]
    found = set(leaks.strings_in({"k": {"inner": ["x", 1, None, {"y": "z"}]}, "d": deep}))
    assert found == {"k", "inner", "x", "y", "z", "d", "bottom"}


def test_leaked_jws() -> None:
    assert not leaks.leaked_jws({"access_token": HANDLE, "id_token": JWT}, allowed=JWT)
    assert leaks.leaked_jws({"access_token": HANDLE, "id_token": JWT}, allowed=None)
    assert leaks.leaked_jws({"access_token": HANDLE, "x": {"y": [JWT]}}, allowed=None)
    assert leaks.leaked_jws({JWT: 1}, allowed=None)  # in a key
    assert leaks.leaked_jws({"note": f"token is {JWT}."}, allowed=None)
    other = jwt.encode({"sub": "bob"}, b"k" * 32, algorithm="HS256")
    assert leaks.leaked_jws({"id_token": JWT, "copy": "x." + other}, allowed=JWT)  # hidden in a longer run
    assert not leaks.leaked_jws({"id_token": JWT, "copy": JWT}, allowed=JWT)  # the id_token twice is fine
    assert leaks.leaked_jws({"id_token": JWT + ".x"}, allowed=JWT + ".x")  # id_token itself not a bare JWS
    assert not leaks.leaked_jws({"host": "api.example.com", "n": 1.5, "b": True}, allowed=None)
    assert not leaks.leaked_jws({}, allowed=None)


@pytest.mark.parametrize(
    "template",
    [
        '[["\\u0000{jwt}"]]',  # JSON text inside a field: the escape's "0000" would glue to the header
        '{"t": "\\n{jwt}"}',
        '{"t": "\\u0065{rest}"}',  # the token's own "e", escaped
        "a=%3A{jwt}",  # a query string inside a field
        "x=%65{rest}",
    ],
)
def test_leaked_jws_sees_through_escapes_inside_a_value(template: str) -> None:
    value = template.replace("{jwt}", JWT).replace("{rest}", JWT[1:])
    assert JWT not in list(policy.jws.find_jws(value))  # the token itself is hidden from a plain scan...
    assert leaks.leaked_jws({"note": value}, allowed=None)  # ...not from leaked_jws
    assert not leaks.leaked_jws({"note": value.replace(JWT[1:], "opaque")}, allowed=None)


# -----------------------------------------------------------------------------------------------------------
# client_authentication


def basic(client_id: str, secret: str) -> str:
    pair = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


ASSERTION = jwt.encode({"iss": "c", "sub": "c", "jti": "1"}, b"k" * 32, algorithm="HS256")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLIENT_AUTHENTICATIONS = {
    "Basic": (basic("demo client", "s3cret"), {}),
    "client_secret": ("", {"client_id": "demo client", "client_secret": "s3cret"}),
    "client_assertion": (
        "",
        {"client_id": "demo client", "client_assertion": ASSERTION, "client_assertion_type": ASSERTION_TYPE},
    ),
    "client_id only": ("", {"client_id": "demo client"}),
}


@pytest.mark.parametrize(
    ("authorization", "fields"), CLIENT_AUTHENTICATIONS.values(), ids=CLIENT_AUTHENTICATIONS
)
def test_client_authentication_names_the_client_and_hides_its_credentials(
    authorization: str, fields: dict[str, str]
) -> None:
    found = policy.client_authentication(authorization, {"grant_type": "refresh_token", **fields})
    assert found.startswith("demo client#")
    assert found == policy.client_authentication(authorization, {**fields, "refresh_token": "other"})
    for credential in ("s3cret", ASSERTION, ASSERTION.split(".")[1], authorization.partition(" ")[2] or "-"):
        assert credential not in found


@pytest.mark.parametrize(
    ("authorization", "fields"),
    [
        (basic("demo client", "wrong"), {}),
        (basic("other", "s3cret"), {}),
        ("", {"client_id": "demo client", "client_secret": "wrong"}),
        ("", {"client_id": "demo client", "client_secret": ["s3cret"]}),  # a JSON body: the type counts
        ("", {"client_id": "demo client", "client_assertion": ASSERTION + "x"}),
        ("", {"client_id": "demo client", "client_assertion": ASSERTION, "client_assertion_type": "other"}),
        ("", {"client_id": "demo client", "client_secret": "s3cret", "client_assertion": ASSERTION}),
        ("", {"client_id": "other client"}),
        ("", {}),
        (basic("demo client", "s3cret") + " ", {"client_secret": "more"}),
        ("Bearer x", {"client_id": "demo client"}),
    ],
)
def test_client_authentication_differs_with_any_credential(
    authorization: str, fields: dict[str, object]
) -> None:
    known = {policy.client_authentication(*case) for case in CLIENT_AUTHENTICATIONS.values()}
    assert len(known) == len(CLIENT_AUTHENTICATIONS)
    assert policy.client_authentication(authorization, fields) not in known


def test_client_authentication_survives_a_broken_basic_header() -> None:
    for value in ("Basic", "Basic !!!", "Basic " + base64.b64encode(b"\xff:x").decode()):
        found = policy.client_authentication(value, {"client_id": "demo"})
        assert found.startswith("demo#")
        assert found != policy.client_authentication("", {"client_id": "demo"})


# -----------------------------------------------------------------------------------------------------------
# quotes / scrubbed: what the proxy swapped into a request, in its answer

REAL = "rt-Zm9vYmFy/baz+qux=="  # a refresh token with characters that escaping changes
OTHER = "rt-YmFyYmF6/qux+foo=="


def json_escaped(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


def percent_encoded(text: str) -> str:
    return "".join(f"%{b:02X}" for b in text.encode())


QUOTED: dict[str, Callable[[str], str]] = {
    "plain": lambda t: f'{{"error_description": "bad {t}"}}',
    "JSON-escaped": lambda t: f'{{"error_description": "bad {json_escaped(t)}"}}',
    "one character escaped": lambda t: f'{{"e": "{t[:3]}\\u{ord(t[3]):04x}{t[4:]}"}}',
    "slash escaped": lambda t: '{"e": "' + t.replace("/", "\\/") + '"}',
    "percent-encoded": lambda t: f"error_description=bad+{percent_encoded(t)}",
    "lower-case percent": lambda t: f"e={percent_encoded(t).lower()}",
    "percent inside JSON": lambda t: f'{{"e": "{percent_encoded(t)}"}}',
    "JSON escapes percent-encoded": lambda t: f"e={percent_encoded(json_escaped(t))}",
}


@pytest.mark.parametrize("quote", QUOTED.values(), ids=QUOTED.keys())
def test_quotes_finds_the_token_in_any_form_a_client_reads(quote: Callable[[str], str]) -> None:
    assert leaks.quotes(quote(REAL).encode(), REAL)
    assert leaks.quotes(quote(REAL), REAL)  # a header value
    assert leaks.quotes(quote(REAL).encode("utf-16"), REAL)
    assert not leaks.quotes(quote(OTHER).encode(), REAL)  # another token, quoted the same way
    assert not leaks.quotes(quote(OTHER), REAL)


def test_quotes_is_about_that_token_only() -> None:
    assert not leaks.quotes(f'{{"refresh_token": "{REAL[:-1]}"}}'.encode(), REAL)
    assert not leaks.quotes(b"", REAL)


def test_scrubbed_replaces_the_token_as_it_stands_by_its_handle() -> None:
    raw = f'{{"error": "invalid_grant", "error_description": "bad {REAL}", "again": "{REAL}"}}'.encode()
    clean = leaks.scrubbed(raw, ["application/json"], REAL, HANDLE)
    assert clean == raw.replace(REAL.encode(), HANDLE.encode())
    assert leaks.scrubbed(b"{}", [], REAL, HANDLE) == b"{}"


@pytest.mark.parametrize("quote", [v for k, v in QUOTED.items() if k != "plain"])
def test_scrubbed_refuses_the_token_in_another_form(quote: Callable[[str], str]) -> None:
    assert leaks.scrubbed(f"{quote(REAL)} and {REAL}".encode(), [], REAL, HANDLE) is None


@pytest.mark.parametrize("header", [f"token={REAL}", f"t={percent_encoded(REAL)}", json_escaped(REAL)])
def test_scrubbed_refuses_the_token_in_a_header(header: str) -> None:
    assert leaks.scrubbed(b'{"error": "invalid_grant"}', ["text/plain", header], REAL, HANDLE) is None


# -----------------------------------------------------------------------------------------------------------
# Lifetimes


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (300, 300.0),
        (0, 0.0),
        (1.5, 1.5),
        ("300", 300.0),
        (" 300 ", 300.0),
        ("1e3", 1000.0),
        (True, None),
        (False, None),
        (None, None),
        (-1, None),
        ("-1", None),
        (float("nan"), None),
        (float("inf"), None),
        ("nan", None),
        ("inf", None),
        ("Infinity", None),
        ("1e400", None),
        ("abc", None),
        ("", None),
        ("1" * 40, None),
        (10**400, None),  # beyond float range: no usable lifetime, never OverflowError
        (-(10**400), None),
        ([300], None),
        ({"a": 1}, None),
    ],
)
def test_number(value: object, expected: float | None) -> None:
    assert policy.number(value) == expected


def test_expiry_prefers_exp_then_expires_in_then_cap() -> None:
    now = 1000.0
    assert policy.expiry(now, exp=1500, expires_in=100, max_ttl=3600) == 1500
    assert policy.expiry(now, exp=None, expires_in=100, max_ttl=3600) == 1100
    assert policy.expiry(now, exp=None, expires_in="100", max_ttl=3600) == 1100
    assert policy.expiry(now, max_ttl=3600) == 4600


def test_expiry_is_capped() -> None:
    now = 1000.0
    assert policy.expiry(now, exp=10**9, max_ttl=60) == 1060
    assert policy.expiry(now, expires_in=10**9, max_ttl=60) == 1060
    assert policy.expiry(now, exp=1e308, max_ttl=60) == 1060


@pytest.mark.parametrize("bad", [True, "soon", float("nan"), float("inf"), -5, 10**400, [1], {"x": 1}])
def test_expiry_bad_inputs_fall_back_and_stay_capped(bad: object) -> None:
    now = 1000.0
    assert policy.expiry(now, exp=bad, expires_in=30, max_ttl=60) == 1030
    assert policy.expiry(now, exp=bad, expires_in=bad, max_ttl=60) == 1060
    assert policy.expiry(now, expires_in=bad, max_ttl=60) == 1060


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
    assert policy.decode_body(encode(data), encoding, limit=len(data)) == data  # type: ignore[operator]
    with pytest.raises(policy.TooLarge):
        policy.decode_body(encode(data), encoding, limit=len(data) - 1)  # type: ignore[operator]


def test_decode_body_stops_a_zip_bomb_at_the_limit() -> None:
    bomb = gzip.compress(b"\0" * 50_000_000)
    assert len(bomb) < 100_000
    start = time.perf_counter()
    with pytest.raises(policy.TooLarge):
        policy.decode_body(bomb, "gzip", limit=1024 * 1024)
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
        policy.decode_body(raw, encoding, limit=1024 * 1024)


def test_decode_body_refuses_oversize_raw_before_decoding() -> None:
    with pytest.raises(policy.TooLarge):
        policy.decode_body(b"x" * 101, "", limit=100)
    assert issubclass(policy.TooLarge, ValueError)
