"""jws.py: recognising, splitting and re-joining compact JWS, and finding them hidden in text."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from splittoken import jws

NOW = 1_700_000_000.0
ALL = frozenset(jws.DEFAULT_ALGORITHMS)
HMAC_KEY = b"k" * 32

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
KEYS: dict[str, Any] = {
    "RS256": RSA_KEY,
    "PS256": RSA_KEY,
    "ES256": EC_KEY,
    "EdDSA": ED_KEY,
    "HS256": HMAC_KEY,
}


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def raw_token(header: bytes | str, payload: bytes | str, signature: str | None = None) -> str:
    """A compact JWS from raw header and payload bytes, HMAC-signed unless a signature is given."""
    h = header.encode() if isinstance(header, str) else header
    p = payload.encode() if isinstance(payload, str) else payload
    signing_input = f"{b64(h)}.{b64(p)}"
    if signature is None:
        signature = b64(hmac.new(HMAC_KEY, signing_input.encode(), hashlib.sha256).digest())
    return f"{signing_input}.{signature}"


def token(alg: str = "RS256", **claims: Any) -> str:
    claims.setdefault("sub", "alice")
    claims.setdefault("exp", int(NOW) + 300)
    return jwt.encode(claims, KEYS[alg], algorithm=alg)


# -----------------------------------------------------------------------------------------------------------
# split / join


@pytest.mark.parametrize("alg", sorted(KEYS))
def test_split_join_round_trip_is_byte_exact(alg: str) -> None:
    t = token(alg, scope="openid profile", nested={"a": [1, 2, {"b": "ü"}]})
    split = jws.split(t, algorithms=ALL, now=NOW)
    assert jws.join(split.signing_input, split.signature) == t
    assert jws.join(split.signing_input, split.signature) == t
    assert t == f"{split.signing_input}.{split.signature}"
    assert split.header["alg"] == alg
    assert split.claims["sub"] == "alice"
    assert "." not in split.signature


def test_split_keeps_odd_but_valid_encodings_byte_exact() -> None:
    # Whitespace and key order in the JSON are preserved: the proxy never re-encodes the signing input.
    t = raw_token('{ "typ":"JWT",\n "alg":"HS256" }', '{"sub" : "x",  "exp": 1800000000}')
    split = jws.split(t, algorithms=ALL, now=NOW)
    assert jws.join(split.signing_input, split.signature) == t


def test_split_accepts_missing_exp() -> None:
    t = raw_token('{"alg":"HS256"}', '{"sub":"x"}')
    assert jws.split(t, algorithms=ALL, now=NOW).claims == {"sub": "x"}


@pytest.mark.parametrize("alg", ["none", "NONE", "None", "nOnE"])
def test_split_refuses_alg_none(alg: str) -> None:
    t = raw_token(json.dumps({"alg": alg}), '{"sub":"x"}', signature="c2ln")
    with pytest.raises(jws.TokenRefused, match="unsigned"):
        jws.split(t, algorithms=ALL | {alg}, now=NOW)


def test_split_refuses_alg_none_unsigned() -> None:
    t = raw_token('{"alg":"none"}', '{"sub":"x"}', signature="")
    with pytest.raises(jws.TokenRefused):
        jws.split(t, algorithms=ALL, now=NOW)


@pytest.mark.parametrize("header", ['{"typ":"JWT"}', '{"alg":null}', '{"alg":256}', '{"alg":["RS256"]}'])
def test_split_refuses_missing_or_non_string_alg(header: str) -> None:
    with pytest.raises(jws.TokenRefused):
        jws.split(raw_token(header, '{"sub":"x"}'), algorithms=ALL, now=NOW)


def test_split_refuses_alg_outside_allowlist() -> None:
    with pytest.raises(jws.TokenRefused, match="not allowed"):
        jws.split(token("HS256"), algorithms=frozenset({"RS256"}), now=NOW)
    with pytest.raises(jws.TokenRefused, match="not allowed"):
        jws.split(raw_token('{"alg":"XX999"}', "{}"), algorithms=ALL, now=NOW)


def test_refusal_message_does_not_echo_a_long_alg() -> None:
    secret = "S" * 200
    with pytest.raises(jws.TokenRefused) as e:
        jws.split(raw_token(json.dumps({"alg": secret}), "{}"), algorithms=ALL, now=NOW)
    assert secret not in str(e.value)
    assert len(str(e.value)) < 80


def test_split_refuses_empty_signature() -> None:
    t = token("RS256")
    unsigned = t.rpartition(".")[0] + "."
    with pytest.raises(jws.TokenRefused, match="no signature"):
        jws.split(unsigned, algorithms=ALL, now=NOW)


def test_split_refuses_expired_tokens_with_leeway() -> None:
    t = token("HS256", exp=int(NOW) - 10)
    with pytest.raises(jws.TokenRefused, match="expired"):
        jws.split(t, algorithms=ALL, now=NOW)
    with pytest.raises(jws.TokenRefused, match="expired"):
        jws.split(t, algorithms=ALL, now=NOW, leeway=10)  # exp + leeway == now: expired
    assert jws.split(t, algorithms=ALL, now=NOW, leeway=11).claims["exp"] == int(NOW) - 10
    with pytest.raises(jws.TokenRefused, match="expired"):
        jws.split(token("HS256", exp=int(NOW)), algorithms=ALL, now=NOW)
    assert jws.split(token("HS256", exp=NOW + 0.5), algorithms=ALL, now=NOW)


@pytest.mark.parametrize(
    "exp", ['"1800000000"', "true", "false", "NaN", "Infinity", "-Infinity", "[1]", '{"a":1}']
)
def test_split_refuses_exp_that_is_not_a_number(exp: str) -> None:
    t = raw_token('{"alg":"HS256"}', f'{{"sub":"x","exp":{exp}}}')
    with pytest.raises(jws.TokenRefused, match="not a number"):
        jws.split(t, algorithms=ALL, now=NOW)


def test_split_exp_null_means_no_exp() -> None:
    t = raw_token('{"alg":"HS256"}', '{"sub":"x","exp":null}')
    assert jws.split(t, algorithms=ALL, now=NOW)


def test_split_huge_integer_exp_is_far_future_not_a_crash() -> None:
    # Valid JSON, beyond float range: must be judged (not expired), never raise OverflowError.
    t = raw_token('{"alg":"HS256"}', '{"sub":"x","exp":1' + "0" * 400 + "}")
    assert jws.split(t, algorithms=ALL, now=NOW, leeway=5).claims["exp"] == 10**400
    t = raw_token('{"alg":"HS256"}', '{"sub":"x","exp":-1' + "0" * 400 + "}")
    with pytest.raises(jws.TokenRefused, match="expired"):
        jws.split(t, algorithms=ALL, now=NOW, leeway=5)


def test_split_refuses_exp_with_too_many_digits() -> None:
    # Python refuses to parse integers of more than 4300 digits: unreadable, refused, no ValueError escapes.
    t = raw_token('{"alg":"HS256"}', '{"exp":1' + "0" * 5000 + "}")
    with pytest.raises(jws.TokenRefused):
        jws.split(t, algorithms=ALL, now=NOW)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "a.b.c.d.e",
        "eyJ.eyJ.sig!",
        "eyJhbGciOiJIUzI1NiJ9 .e30.c2ln",
        "eyJhbGciOiJIUzI1NiJ9.e30.c2ln\n",
        "eyJhbGciOiJIUzI1NiJ9.e30.c2l+",
        "eyJhbGciOiJIUzI1NiJ9.e30=.c2ln",
    ],
)
def test_split_refuses_what_is_not_compact(bad: str) -> None:
    with pytest.raises(jws.TokenRefused):
        jws.split(bad, algorithms=ALL, now=NOW)


@pytest.mark.parametrize(
    "t",
    [
        "eyJhbGciOiJIUzI1NiJ9x.e30.c2ln",  # header length 1 mod 4: not base64
        "eyJhbGciOiJIUzI1NiJ9.e30x1.c2ln",  # payload length 1 mod 4
        "eyJhbGciOiJIUzI1NiJ9.e30.c2lnX",  # signature length 1 mod 4
        raw_token(b'{"alg":"HS256"', '{"sub":"x"}'),  # header not JSON
        raw_token(b"\xff\xfe\xfd", '{"sub":"x"}'),  # header not text
        raw_token("[1,2]", '{"sub":"x"}'),  # header not an object
        raw_token('"alg"', '{"sub":"x"}'),
        raw_token('{"alg":"HS256"}', "[1,2]"),  # payload not an object
        raw_token('{"alg":"HS256"}', '"sub"'),
        raw_token('{"alg":"HS256"}', "42"),
        raw_token('{"alg":"HS256"}', "null"),
        raw_token('{"alg":"HS256"}', "not json"),
        raw_token('{"alg":"HS256"}', b"\xc3\x28"),  # payload bad UTF-8
        raw_token('{"alg":"HS256"}', "[" * 100_000 + "]" * 100_000),  # deep nesting: RecursionError
        raw_token('{"alg":"HS256"}', '{"a":' * 100_000 + "1" + "}" * 100_000),
        raw_token('{"a":' * 100_000 + "1" + "}" * 100_000, "{}"),
        raw_token('{"alg":"HS256","b64":false}', "{}"),  # unencoded payload needs a detached payload
    ],
)
def test_split_refuses_unreadable_tokens(t: str) -> None:
    with pytest.raises(jws.TokenRefused):
        jws.split(t, algorithms=ALL, now=NOW)


def test_inspect_reads_without_verifying() -> None:
    t = token("RS256")
    header, claims = jws.inspect(t[:-4] + "AAAA")  # broken signature: still readable
    assert header["alg"] == "RS256"
    assert claims["sub"] == "alice"
    with pytest.raises(jws.TokenRefused):
        jws.inspect("not a token")


def test_refusal_messages_never_hold_the_token() -> None:
    t = token("HS256", exp=int(NOW) - 100)
    for call in (
        lambda: jws.split(t, algorithms=ALL, now=NOW),
        lambda: jws.split(t, algorithms=frozenset({"RS256"}), now=NOW + 1e9),
        lambda: jws.split(t.rpartition(".")[0] + ".", algorithms=ALL, now=NOW),
    ):
        with pytest.raises(jws.TokenRefused) as e:
            call()
        for part in t.split("."):
            assert part not in str(e.value)


# -----------------------------------------------------------------------------------------------------------
# has_compact_shape


@pytest.mark.parametrize("alg", sorted(KEYS))
def test_has_compact_shape_real_tokens(alg: str) -> None:
    assert jws.has_compact_shape(token(alg))


@pytest.mark.parametrize(
    "value",
    [
        "",
        "handle",
        "api.example.com",
        "www.example.co.uk",
        "a.b.c",
        "1.2.3",
        "abc.def.ghi",
        "e.e.x",  # too short to decode to anything
        "W10.e30.c2ln",  # header is "[]"
        "ImEi.e30.c2ln",  # header is a string
    ],
)
def test_has_compact_shape_rejects_non_jws(value: str) -> None:
    assert not jws.has_compact_shape(value)


def test_has_compact_shape_signature_may_be_empty_so_unsigned_is_recognised() -> None:
    assert jws.has_compact_shape(raw_token('{"alg":"none"}', "{}", signature=""))


@pytest.mark.parametrize(
    "encoding", ["utf-8", "utf-8-sig", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"]
)
def test_has_compact_shape_sees_every_encoding_pyjwt_reads(encoding: str) -> None:
    # pyjwt (json.loads on bytes) reads BOM-prefixed and UTF-16/32 headers: the proxy must see a JWS there
    # too, else such a token passes as "opaque" and reaches the client whole.
    t = raw_token('{"alg":"HS256"}'.encode(encoding), '{"sub":"x"}'.encode(encoding))
    assert jwt.decode(t, HMAC_KEY, algorithms=["HS256"]) == {"sub": "x"}
    assert jws.has_compact_shape(t)
    assert list(jws.find_jws(t)) == [t]


def test_has_compact_shape_sees_header_with_long_leading_whitespace() -> None:
    t = raw_token(" " * 40 + '{"alg":"HS256"}', "\n" * 30 + '{"sub":"x"}')
    assert jwt.decode(t, HMAC_KEY, algorithms=["HS256"]) == {"sub": "x"}
    assert jws.has_compact_shape(t)
    assert list(jws.find_jws(t)) == [t]


# -----------------------------------------------------------------------------------------------------------
# find_jws


def test_find_jws_finds_a_plain_token() -> None:
    t = token("RS256")
    assert list(jws.find_jws(t)) == [t]
    assert list(jws.find_jws(f'{{"x": "{t}"}}')) == [t]
    assert list(jws.find_jws(f"access_token={t}&x=1")) == [t]


def test_find_jws_finds_token_with_empty_claims() -> None:
    t = jwt.encode({}, HMAC_KEY, algorithm="HS256")  # payload "e30" is three characters
    assert t.split(".")[1] == "e30"
    assert list(jws.find_jws(t)) == [t]


@pytest.mark.parametrize(
    "template",
    [
        "x.{t}",
        "{t}.x",
        "a.b.{t}.c.d",
        "eyJhbGciOiJIUzI1NiJ9.{t}",
        "{t}.{t}",
        "x-y.{t}.z_w",
        "...{t}...",
        "/{t}/",
    ],
)
def test_find_jws_finds_tokens_hidden_in_longer_runs(template: str) -> None:
    t = token("ES256")
    found = list(jws.find_jws(template.format(t=t)))
    assert t in found or any(t.split(".")[0] in f and t.split(".")[1] in f for f in found)
    assert found


def test_find_jws_finds_unsigned_token() -> None:
    t = raw_token('{"alg":"none"}', '{"sub":"x"}', signature="")
    assert list(jws.find_jws(t + " ")) == [t]


def test_find_jws_leaves_jwe_alone() -> None:
    header = b64(b'{"alg":"RSA-OAEP-256","enc":"A256GCM"}')
    jwe = f"{header}.{b64(bytes(range(256)))}.{b64(b'0' * 12)}.{b64(b'ciphertext' * 9)}.{b64(b'T' * 16)}"
    assert list(jws.find_jws(jwe)) == []
    dir_header = b64(b'{"alg":"dir","enc":"A128GCM"}')
    dir_jwe = f"{dir_header}..{b64(b'iv' * 6)}.{b64(b'c' * 30)}.{b64(b't' * 16)}"
    assert list(jws.find_jws(dir_jwe)) == []


def test_find_jws_jwe_whose_random_parts_start_with_a_brace_is_still_not_flagged() -> None:
    header = b64(b'{"alg":"RSA-OAEP","enc":"A256GCM"}')
    jwe = f"{header}.{b64(b'{' + bytes(255))}.{b64(b'{' + bytes(11))}.{b64(b'{abc')}.{b64(b'T' * 16)}"
    assert list(jws.find_jws(jwe)) == []


def test_find_jws_finds_jws_framed_as_a_jwe() -> None:
    # A JWE-like header in front and one segment behind make five parts; the middle three are a JWS.
    t = token("HS256")
    header = b64(b'{"alg":"dir","enc":"A256GCM"}')
    assert list(jws.find_jws(f"{header}.{t}.AAAA")) == [t]
    assert list(jws.find_jws(f"{header}.AAAA.{t}")) == [t]


def test_find_jws_deeply_nested_jwe_header_does_not_raise() -> None:
    deep = b64(b"[" * 100_000)
    assert list(jws.find_jws(f"{deep}.a.b.c.d")) == []


@pytest.mark.parametrize(
    "text",
    [
        "",
        "api.example.com",
        "https://login.example.com/realms/demo/protocol/openid-connect/token",
        "a.b.c.d.e.f.g",
        "1.2.3.4",
        "foo.bar.baz.example.org",
        "v1.2.3-rc.1",
        "eyJ",
        "...",
        "e30",
        "Bearer abcdef",
    ],
)
def test_find_jws_ignores_hostnames_and_other_dotted_text(text: str) -> None:
    assert list(jws.find_jws(text)) == []


MB = 1024 * 1024


@pytest.mark.parametrize(
    "make",
    [
        lambda n: "a" * n,
        lambda n: "eyJ" * (n // 3),
        lambda n: "." * n,
        lambda n: "eyJhbGc." * (n // 8),
        lambda n: "e30." * (n // 4),
        lambda n: "eyJhbGc.a." * (n // 10),
        lambda n: "a." * (n // 2),
        lambda n: "eyJ" + "A" * (n // 2) + "." + "eyJ" + "A" * (n // 2) + ".x",
        lambda n: "eyJhbGc.eyJhbGc.x " * (n // 18),
        lambda n: ".".join(f"e3{i:x}" for i in range(n // 8)),  # distinct segments that all open "{"
    ],
    ids=[
        "a",
        "eyJ",
        "dots",
        "eyJhbGc.",
        "e30.",
        "alternating",
        "a.",
        "two-huge-segments",
        "many-runs",
        "unique",
    ],
)
@pytest.mark.parametrize("size", [1 * MB, 4 * MB])
def test_scans_are_linear_on_adversarial_input(make: Any, size: int) -> None:
    text = make(size)
    start = time.perf_counter()
    for _ in jws.find_jws(text):
        pass
    jws.has_compact_shape(text)
    assert time.perf_counter() - start < 2.0
