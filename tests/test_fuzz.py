"""Property tests through the addon's hooks: whatever the authorization server or the client sends, no
exception escapes, no JWS other than the id_token reaches the client, and a join or a refresh only ever
forwards the token stored for that exact handle.

Profiles: "ci" (default, ~2000 examples in all, < 60 s) and "fuzz" (20x):
``HYPOTHESIS_PROFILE=fuzz make fuzz``.

The strategies include what the fuzz profile and the unit tests once found leaking: a JWS behind a JSON or
percent escape (``\\n``, ``\\u0065``, ``%3A``) in a body that does not parse, JSON in UTF-16/32, and an
id_token equal to the access token.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow

from hooks import HookDriver as Proxy
from hooks import driven_addon, flow_for
from splittoken import jws, leaks
from splittoken.bodies import TokenBody
from splittoken.errors import Unparseable

_COMMON = {
    "deadline": None,
    "suppress_health_check": [
        HealthCheck.function_scoped_fixture,  # one proxy per test, shared by its examples on purpose
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
    "derandomize": False,
}
settings.register_profile("ci", max_examples=100, **_COMMON)
settings.register_profile("fuzz", max_examples=2000, **_COMMON)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)
SCALE = 20 if PROFILE == "fuzz" else 1


def examples(n: int) -> settings:
    return settings(max_examples=n * SCALE)


IDP = "http://idp.example/realms/demo/protocol/openid-connect"

# -----------------------------------------------------------------------------------------------------------
# A pool of real tokens (signing is slow: done once). Every token has a unique jti, so its payload segment is
# unique too and can be looked for in what the client gets.

_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_EC = ec.generate_private_key(ec.SECP256R1())
_ED = ed25519.Ed25519PrivateKey.generate()
_HS = b"h" * 32
_SIGNERS = [("RS256", _RSA), ("ES256", _EC), ("EdDSA", _ED), ("HS256", _HS), ("PS256", _RSA)]
_counter = iter(range(10**9))


def _mint(alg: str, key: Any, **claims: Any) -> str:
    claims.setdefault("sub", f"user-{next(_counter)}")
    claims.setdefault("exp", int(time.time()) + 3600)
    claims["jti"] = f"jti-{next(_counter)}"
    return jwt.encode(claims, key, algorithm=alg)


# Tokens the proxy may split (access tokens) and must never let out elsewhere.
GOOD = [_mint(alg, key) for alg, key in _SIGNERS for _ in range(3)]
GOOD += [
    _mint("RS256", _RSA, typ="Refresh"),
    _mint("ES256", _EC, scope="a b", nested={"x": [1, {"y": None}]}),
]
# Tokens the proxy refuses: alg none, unsigned, expired, exp not a number.
BAD = [
    jwt.encode({"sub": "x", "jti": "none-1"}, None, algorithm="none"),
    jwt.encode({"sub": "x", "jti": "none-2"}, None, algorithm="none") + "c2lnbmF0dXJl",
    _mint("RS256", _RSA).rpartition(".")[0] + ".",
    _mint("HS256", _HS, exp=int(time.time()) - 100),
    _mint("ES256", _EC, exp="never"),
    _mint("HS256", _HS, exp=True),
]
# id_tokens: meant for the client, drawn from their own pool so that "allowed" is unambiguous.
ID_TOKENS = [_mint("RS256", _RSA, aud="client", nonce=f"n{i}") for i in range(3)]
JWE = (
    jwt.utils.base64url_encode(b'{"alg":"RSA-OAEP-256","enc":"A256GCM"}').decode()
    + ".T3BhcXVlS2V5.SVZJVklWSVZJVg.Y2lwaGVydGV4dA.dGFndGFndGFn"
)
SECRET_TOKENS = GOOD + BAD

b64url = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=60)
jwt_like = st.one_of(
    st.builds(lambda a, b, c: f"{a}.{b}.{c}", b64url, b64url, b64url),
    st.builds(lambda a, b, c: f"eyJ{a}.eyJ{b}.{c}", b64url, b64url, b64url),
    st.builds(lambda n, t: t.rsplit(".", 1)[0] + "." + "A" * n, st.integers(0, 10), st.sampled_from(GOOD)),
    st.lists(b64url, min_size=1, max_size=7).map(".".join),
    st.sampled_from(["e30.e30.", "e30.e30.e30", "eyJ.eyJ.eyJ", "...", "a..b", JWE]),
)
secret = st.sampled_from(SECRET_TOKENS)
# Between a token and its neighbours: anything that is not base64url. In JSON and form bodies only what
# neither encoding escapes (see the module docstring).
RAW_SEPARATORS = st.sampled_from([" ", ".", "/", "\n", '"', "=", "&", ":", ",", "\x00", "é", "\\", "%"])
STRUCTURED_SEPARATORS = RAW_SEPARATORS  # escaped by JSON (\\n, \\u00e9) or percent-encoded in forms
RUN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@st.composite
def embedded(draw: st.DrawFn) -> str:
    """A secret token with something in front and behind: the leak scan must still see it."""
    before, after = draw(st.text(max_size=8)), draw(st.text(max_size=8))
    return before + draw(STRUCTURED_SEPARATORS) + draw(secret) + draw(STRUCTURED_SEPARATORS) + after


clean_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**330),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    jwt_like,
    st.just(JWE),
)
# Mostly clean values, so that many bodies are split rather than refused; now and then a secret token.
leaf = st.one_of(clean_leaf, clean_leaf, clean_leaf, clean_leaf, clean_leaf, secret, embedded())
# Nested objects now and then use the token field names too: {"data": {"access_token": ...}}.
member_name = st.one_of(st.text(max_size=10), st.sampled_from(["access_token", "refresh_token", "id_token"]))
json_value = st.recursive(
    leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(member_name, children, max_size=4)
    ),
    max_leaves=12,
)
access_value = st.one_of(
    st.sampled_from(GOOD),
    st.sampled_from(GOOD),
    st.sampled_from(GOOD),
    secret,
    jwt_like,
    st.just(JWE),
    st.text(max_size=40),
    st.integers(),
    st.none(),
    json_value,
    embedded(),
)
refresh_value = st.one_of(st.text(max_size=40), secret, jwt_like, st.none(), st.integers(), st.just(""))


@st.composite
def token_fields(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """Members of a token response, as pairs: the same name may come twice (written as raw text)."""
    pairs: list[tuple[str, Any]] = []
    access = draw(access_value) if draw(st.integers(0, 7)) else None
    if access is not None:
        pairs.append(("access_token", access))
    if draw(st.booleans()):
        pairs.append(("refresh_token", draw(refresh_value)))
    if draw(st.booleans()):
        # Now and then the access token again: an id_token must not carry it out.
        id_tokens = [*ID_TOKENS, access] if isinstance(access, str) else ID_TOKENS
        pairs.append(("id_token", draw(st.sampled_from(id_tokens))))
    lifetime = st.one_of(st.integers(), st.text(max_size=12), st.floats(), st.just(10**400))
    names = ["expires_in", "refresh_expires_in", "token_type", "scope"]
    pairs += [(name, draw(lifetime)) for name in draw(st.lists(st.sampled_from(names), unique=True))]
    reserved = {"access_token", "refresh_token", "id_token", *names}
    others = st.dictionaries(st.text(max_size=12).filter(lambda k: k not in reserved), json_value, max_size=3)
    pairs += list(draw(others).items())
    if draw(st.integers(0, 9)) == 0 and pairs:  # a duplicate member
        name = draw(st.sampled_from([p[0] for p in pairs]))
        pairs.append((name, draw(access_value)))
    return draw(st.permutations(pairs))


def _json_text(value: Any, ensure_ascii: bool) -> str:
    try:
        return json.dumps(value, ensure_ascii=ensure_ascii)
    except (ValueError, RecursionError):
        return "null"


@st.composite
def token_response(draw: st.DrawFn) -> tuple[bytes, str, bool]:
    """(raw body, content type, gzip) of a token endpoint answer."""
    kind = draw(st.sampled_from(["json"] * 6 + ["form"] * 2 + ["bytes", "huge-number", "text", "utf-16/32"]))
    if kind == "json":
        ensure_ascii = draw(st.booleans())
        pairs = draw(token_fields())
        space = draw(st.sampled_from(["", " ", "\n  "]))
        members = [
            f"{space}{_json_text(k, ensure_ascii)}:{space}{_json_text(v, ensure_ascii)}" for k, v in pairs
        ]
        raw = ("{" + ",".join(members) + space + "}").encode("utf-8", "surrogatepass")
        ctype = draw(
            st.sampled_from(["application/json", "application/json;charset=UTF-8", "", "text/plain"])
        )
    elif kind == "form":
        # A structured value goes in as JSON text, so quotes before a token get percent-encoded (%22eyJ...).
        pairs = [(k, v if isinstance(v, str) else _json_text(v, True)) for k, v in draw(token_fields())]
        raw = urllib.parse.urlencode(pairs, errors="surrogatepass").encode()
        ctype = draw(st.sampled_from(["application/x-www-form-urlencoded", ""]))
    elif kind == "bytes":
        raw = draw(st.binary(max_size=200))
        if draw(st.booleans()):
            at = draw(st.integers(0, len(raw)))
            glue = [draw(RAW_SEPARATORS).encode() for _ in range(2)]
            raw = raw[:at] + glue[0] + draw(secret).encode() + glue[1] + raw[at:]
        ctype = draw(st.sampled_from(["application/json", "application/octet-stream", ""]))
    elif kind == "utf-16/32":
        pairs = dict(draw(token_fields()))
        raw = json.dumps(pairs).encode(draw(st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32"])))
        ctype = draw(st.sampled_from(["application/json", ""]))
    elif kind == "huge-number":
        digits = draw(st.integers(300, 6000))
        raw = (
            '{"access_token": ' + json.dumps(draw(secret)) + ', "expires_in": 1' + "0" * digits + "}"
        ).encode()
        ctype = "application/json"
    else:
        text = draw(st.text(max_size=40)) + draw(RAW_SEPARATORS) + "JWT" + draw(RAW_SEPARATORS)
        text += draw(st.text(max_size=40))
        raw = text.replace("JWT", draw(secret)).encode("utf-8", "surrogatepass")
        ctype = draw(st.sampled_from(["text/html", "application/json", ""]))
    return raw, ctype, draw(st.integers(0, 4)) == 0


# -----------------------------------------------------------------------------------------------------------
# The proxy


@pytest.fixture
async def proxy(tmp_path: Any) -> AsyncIterator[Proxy]:
    with driven_addon(tmp_path) as driver:
        yield driver


def _post(url: str, body: bytes, ctype: str, mode: str | None = None) -> http.HTTPFlow:
    return flow_for("POST", url, body, {"Content-Type": ctype}, mode)


def _client_body(response: http.Response) -> bytes:
    try:
        content = response.get_content()
    except ValueError:
        content = None
    return content if content is not None else (response.raw_content or b"")


def _allowed_id_token(response: http.Response, body: bytes) -> str | None:
    try:
        parsed = TokenBody.parse(response.headers.get("content-type", ""), body)
    except Unparseable:
        return None
    value = parsed.fields.get("id_token")
    return value if isinstance(value, str) else None


async def _issue(proxy: Proxy, access: str, refresh: str | None = None) -> dict[str, Any]:
    fields = {"access_token": access, "token_type": "Bearer", "expires_in": 300}
    if refresh:
        fields["refresh_token"] = refresh
    flow = _post(f"{IDP}/token", b"grant_type=password&client_id=c", "application/x-www-form-urlencoded")
    assert await proxy.request(flow)
    upstream = http.Response.make(200, json.dumps(fields).encode(), {"Content-Type": "application/json"})
    answer = await proxy.respond(flow, upstream)
    assert answer.status_code == 200, answer.text
    return json.loads(answer.content or b"")


# -----------------------------------------------------------------------------------------------------------
# Token responses


@examples(900)
@given(response=token_response(), status=st.sampled_from([200, 200, 200, 200, 201, 400, 401, 500]))
async def test_no_jws_but_the_id_token_reaches_the_client(
    proxy: Proxy, response: tuple[bytes, str, bool], status: int
) -> None:
    raw, ctype, gzipped = response
    flow = _post(
        f"{IDP}/token",
        b"grant_type=password&username=u&password=p&client_id=c",
        "application/x-www-form-urlencoded",
    )
    assert await proxy.request(flow)  # a password grant always goes upstream
    headers = {"Content-Type": ctype} if ctype else {}
    upstream = http.Response.make(status, raw, headers)
    if gzipped:
        upstream.encode("gzip")
    before = upstream.copy()
    client = await proxy.respond(flow, upstream)  # no exception escapes
    rewritten = client.raw_content != before.raw_content
    event(f"upstream {status} -> client {client.status_code}{' rewritten' if rewritten else ''}")

    if not 200 <= status < 300:
        # The provider's errors pass unchanged, unless they would carry a token out (a JWS, or a field
        # named for a refresh token, whose value may be opaque): then 502.
        content = before.get_content() or b""
        if leaks.holds_jws(content) or leaks.names_a_refresh_token(content.decode("utf-8", "replace")):
            assert client.status_code == 502
        else:
            assert client.raw_content == before.raw_content
        return
    body = _client_body(client)
    allowed = _allowed_id_token(client, body)
    text = body.decode("utf-8", "replace")
    leaked = [found for found in jws.find_jws(text) if found != allowed]
    assert leaked == [], (client.status_code, text[:300])
    for token in SECRET_TOKENS:
        signing_input = token.rpartition(".")[0]
        payload = token.split(".")[1]
        for needle in (token, signing_input, payload):
            for encoding in ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):
                assert needle.encode(encoding) not in body, (client.status_code, encoding, needle[:40])
        if gzipped:
            assert payload.encode() not in (client.raw_content or b"")
    if client.status_code >= 500:
        error = json.loads(client.content or b"")
        assert error["error"] in ("server_error", "temporarily_unavailable")
        event(f"refused: {error['error_description'].split(':')[1][:30]}")


# -----------------------------------------------------------------------------------------------------------
# API route: joins


@st.composite
def authorization(draw: st.DrawFn, handles: list[str], refresh_handles: list[str]) -> list[bytes]:
    def one() -> str:
        handle = draw(st.sampled_from(handles))
        choice = draw(st.integers(0, 11))
        if choice == 0:
            return handle
        if choice == 1:  # mutated handle: one character changed
            i = draw(st.integers(0, len(handle) - 1))
            c = draw(st.sampled_from("AQgw-_09az"))
            return "Bearer " + handle[:i] + c + handle[i + 1 :]
        if choice == 2:  # truncated or extended
            cut = draw(st.integers(0, len(handle)))
            return "Bearer " + handle[:cut] + draw(b64url)
        if choice == 3:
            return "Bearer " + draw(st.sampled_from(refresh_handles))
        if choice == 4:
            return "Bearer " + draw(st.sampled_from(GOOD))
        if choice == 5:
            return draw(st.sampled_from(["Basic ", "DPoP ", "bearer\t", "Bearer  ", "", "Token "])) + handle
        if choice == 6:
            return draw(st.text(max_size=60))
        if choice == 7:
            return "Bearer " + draw(jwt_like)
        scheme = draw(st.sampled_from(["Bearer", "bearer", "BEARER", "BeArEr"]))
        spaces = " " * draw(st.integers(1, 3))
        lead, trail = draw(st.sampled_from(["", " ", "\t"])), draw(st.sampled_from(["", " "]))
        return f"{lead}{scheme}{spaces}{handle}{trail}"

    count = draw(st.sampled_from([1, 1, 1, 1, 1, 1, 0, 2, 3]))  # mostly one header, as clients send
    values = [one() for _ in range(count)]
    return [v.encode("utf-8", "surrogateescape") for v in values]


@examples(700)
@given(data=st.data())
async def test_join_forwards_only_the_token_of_that_exact_handle(proxy: Proxy, data: st.DataObject) -> None:
    issued: dict[str, str] = getattr(proxy, "issued", {})
    refresh_handles: list[str] = getattr(proxy, "refresh_handles", [])
    if not issued:
        for token in GOOD[:6]:
            answer = await _issue(proxy, token, refresh=f"refresh-{token[-10:]}")
            assert answer["access_token"] == token.rpartition(".")[2]
            issued[answer["access_token"]] = token
            refresh_handles.append(answer["refresh_token"])
        proxy.issued = issued  # type: ignore[attr-defined]
        proxy.refresh_handles = refresh_handles  # type: ignore[attr-defined]

    values = data.draw(authorization(list(issued), refresh_handles))
    mode = data.draw(st.sampled_from(["reverse:http://api.example"] * 5 + [None]))
    flow = tflow.tflow(
        req=http.Request.make(
            "GET", "http://api.example/items", b"", http.Headers([(b"Authorization", v) for v in values])
        )
    )
    if mode:
        flow.client_conn.proxy_mode = ProxyMode.parse(mode)
    before = flow.request.headers.get_all("Authorization")
    forwarded = await proxy.request(flow)

    after = flow.request.headers.get_all("Authorization")
    event(f"{'forwarded' if forwarded else flow.response and flow.response.status_code}, mode {mode}")
    if not mode:
        assert forwarded and after == before  # regular mode, no api filter: never touched
        return
    if not forwarded:
        assert flow.response is not None
        assert flow.response.status_code in (400, 401, 503)
        assert after == before  # refused: the request keeps what the client sent, and goes nowhere
        body = flow.response.content or b""
        assert all(token.encode() not in body for token in issued.values())
        return
    # Forwarded: exactly one header, the JWT issued for exactly the handle presented.
    assert len(before) == 1 and len(after) == 1
    assert after[0].startswith("Bearer ")
    token = after[0].removeprefix("Bearer ")
    presented = before[0].strip(" \t")
    presented = presented.split()[-1] if " " in presented else presented
    assert presented in issued
    assert issued[presented] == token


# -----------------------------------------------------------------------------------------------------------
# Refresh and revocation requests


@examples(300)
@given(data=st.data())
async def test_refresh_and_revoke_swap_only_the_exact_handle(proxy: Proxy, data: st.DataObject) -> None:
    # handle -> what it stands for (the real refresh token, or the whole access JWT); kept across examples.
    issued: dict[str, str] = getattr(proxy, "issued", {})
    if not issued:
        for i, token in enumerate(GOOD[:4]):
            await _issue_into(proxy, issued, token, f"real-refresh-{i}-" + "x" * 30)
        proxy.issued = issued  # type: ignore[attr-defined]
    route = data.draw(st.sampled_from(["token", "revoke"]))
    refresh_handles = sorted(h for h, v in issued.items() if v.startswith("real-"))
    handle = data.draw(st.sampled_from(refresh_handles if route == "token" else sorted(issued)))
    presented = data.draw(
        st.one_of(
            st.just(handle),
            st.just(handle),
            st.just(handle),
            st.builds(lambda h, c: h[:-1] + c, st.just(handle), st.sampled_from("AZaz09-_")),
            st.builds(lambda h, n: h[:n], st.just(handle), st.integers(0, 42)),
            st.text(max_size=40),
            jwt_like,
            st.sampled_from(GOOD),
        )
    )
    field = "refresh_token" if route == "token" else "token"
    extra = data.draw(
        st.dictionaries(st.sampled_from(["client_id", "scope", "token_type_hint"]), st.text(max_size=8))
    )
    fields = {"grant_type": "refresh_token"} if route == "token" else {}
    # A client that identifies itself: without one, the request is no token request but an API call.
    fields.update({field: presented, "client_id": "c", **extra})
    if data.draw(st.booleans()):
        body, ctype = json.dumps(fields).encode(), "application/json"
    else:
        body = urllib.parse.urlencode(fields, errors="surrogatepass").encode()
        ctype = "application/x-www-form-urlencoded"
    flow = _post(f"{IDP}/{route}", body, ctype)
    forwarded = await proxy.request(flow)
    event(f"{route}: {'forwarded' if forwarded else flow.response and flow.response.status_code}")

    secrets = [v for v in issued.values() if v.startswith("real-")] + GOOD
    if not forwarded:
        assert flow.response is not None
        answer = flow.response.content or b""
        assert all(value.encode() not in answer for value in secrets)
        return
    sent = TokenBody.parse(ctype, flow.request.content or b"").fields
    value = sent.get(field)
    # Settle the exchange, as the authorization server would, so the next example starts clean.
    await proxy.respond(flow, http.Response.make(503, b'{"error":"temporarily_unavailable"}', {}))
    if value == presented:
        return  # unchanged: not one of ours, the authorization server judges it
    event(f"{route}: swapped")
    # Swapped: only ever for the exact handle presented, and only ever to what that handle stands for.
    assert presented in issued, presented
    assert value == issued[presented]
    if route == "revoke":  # the handle is gone now: issue its token again for the next examples
        stands_for = issued.pop(presented)
        if stands_for.startswith("real-"):
            await _issue_into(proxy, issued, GOOD[0], stands_for)
        else:
            await _issue_into(proxy, issued, stands_for, None)


async def _issue_into(proxy: Proxy, issued: dict[str, str], token: str, refresh: str | None) -> None:
    answer = await _issue(proxy, token, refresh=refresh)
    assert answer["access_token"] == token.rpartition(".")[2]
    issued[answer["access_token"]] = token
    if refresh:
        issued[answer["refresh_token"]] = refresh


# -----------------------------------------------------------------------------------------------------------
# The scanner itself


@examples(100)
@given(
    before=st.text(max_size=20),
    token=st.sampled_from(SECRET_TOKENS),
    after=st.text(max_size=20),
    sep1=st.one_of(RAW_SEPARATORS, st.sampled_from(["", "-", "a"])),
    sep2=st.one_of(RAW_SEPARATORS, st.sampled_from(["", "-", "a"])),
)
def test_find_jws_sees_a_token_whatever_surrounds_it(
    before: str, token: str, after: str, sep1: str, sep2: str
) -> None:
    text = before + sep1 + token + sep2 + after
    header, payload, _ = token.split(".")
    found = list(jws.find_jws(text))
    if sep1 in RUN_CHARS or (sep1 == "" and before[-1:] in RUN_CHARS and before):
        return  # glued to the header segment: a different segment, no longer this token's header
    assert any(f.startswith(f"{header}.{payload}.") for f in found), text


@examples(60)
@given(
    value=st.one_of(
        jwt_like, st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))
    )
)
def test_scanner_and_shape_never_raise(value: str) -> None:
    list(jws.find_jws(value))
    jws.has_compact_shape(value)
    if jws.has_compact_shape(value):
        assert value.count(".") == 2
