"""addon.py: every hook path of SplitToken, driven with mitmproxy's taddons and tflow."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from mitmproxy import exceptions, http
from mitmproxy.test import taddons, tflow

from hooks import HookDriver as Proxy
from hooks import driven_addon, flow_for
from splittoken import addon as addon_module
from splittoken import jws
from splittoken.addon import SplitToken
from splittoken.store import StoreUnavailable

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
IDP = "http://idp.example/realms/demo/protocol/openid-connect"
API = "http://api.example/items"
REVERSE_API = "reverse:http://api.example"
REVERSE_IDP = "reverse:http://idp.example"


def make_jwt(alg: str = "RS256", key: Any = RSA_KEY, **claims: Any) -> str:
    claims.setdefault("sub", "alice")
    claims.setdefault("exp", int(time.time()) + 300)
    claims.setdefault("iss", "http://idp.example/realms/demo")
    return jwt.encode(claims, key, algorithm=alg)


def sig(token: str) -> str:
    return token.rpartition(".")[2]


def is_handle(value: object) -> bool:
    return isinstance(value, str) and len(value) >= 43 and all(c.isalnum() or c in "-_" for c in value)


# -----------------------------------------------------------------------------------------------------------
# Fixture and drivers


def token_fields(**extra: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "access_token": make_jwt(scope="openid"),
        "token_type": "Bearer",
        "expires_in": 300,
        "refresh_token": "opaque-refresh-" + "r" * 40,
        "refresh_expires_in": 1800,
        "id_token": make_jwt(aud="demo-client", nonce="n"),
        "scope": "openid profile",
        "session_state": "abc-123",
    }
    fields.update(extra)
    return fields


def json_response(
    fields: Any, status: int = 200, headers: dict[str, str] | None = None, raw: bytes | None = None
) -> http.Response:
    content = raw if raw is not None else json.dumps(fields).encode()
    h = {"Content-Type": "application/json", "X-Request-Id": "req-42", "Cache-Control": "private"}
    h.update(headers or {})
    return http.Response.make(status, content, h)


def form_response(fields: dict[str, Any], status: int = 200) -> http.Response:
    content = urllib.parse.urlencode(fields).encode()
    return http.Response.make(status, content, {"Content-Type": "application/x-www-form-urlencoded"})


def token_flow(
    body: bytes = b"grant_type=password&username=alice&password=pw",
    ctype: str = "application/x-www-form-urlencoded",
    url: str = f"{IDP}/token",
    mode: str | None = None,
) -> http.HTTPFlow:
    return flow_for("POST", url, body, {"Content-Type": ctype}, mode)


def refresh_flow(handle: str, *, json_body: bool = False, url: str = f"{IDP}/token") -> http.HTTPFlow:
    if json_body:
        body = json.dumps({"grant_type": "refresh_token", "refresh_token": handle, "client_id": "demo"})
        return token_flow(body.encode(), "application/json", url=url)
    form = urllib.parse.urlencode(
        {"grant_type": "refresh_token", "refresh_token": handle, "client_id": "demo"}
    )
    return token_flow(form.encode(), url=url)


def revoke_flow(token: str, hint: str | None = None, url: str = f"{IDP}/revoke") -> http.HTTPFlow:
    fields = {"token": token, **({"token_type_hint": hint} if hint else {})}
    body = urllib.parse.urlencode(fields).encode()
    return flow_for("POST", url, body, {"Content-Type": "application/x-www-form-urlencoded"})


def api_flow(
    *authorization: str, url: str = API, mode: str | None = REVERSE_API, host: str | None = None
) -> http.HTTPFlow:
    flow = flow_for("GET", url, b"", [("Authorization", a) for a in authorization], mode)
    if host:
        flow.request.headers["Host"] = host  # as a client writes it; the connection still goes to url's host
    return flow


def body_of(response: http.Response) -> dict[str, Any]:
    ctype = response.headers.get("content-type", "")
    text = response.get_text()
    assert text is not None
    if "x-www-form-urlencoded" in ctype:
        return dict(urllib.parse.parse_qsl(text, keep_blank_values=True))
    return json.loads(text)


def assert_error(response: http.Response, status: int, error: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = json.loads(response.content or b"")
    assert body.get("error") == error
    assert isinstance(body["error_description"], str)
    return body


async def refreshing(proxy: Proxy) -> tuple[dict[str, Any], str, http.HTTPFlow]:
    """A login, then a refresh with the refresh handle it gave, on its way upstream."""
    fields, client = await login(proxy)
    handle = body_of(client)["refresh_token"]
    flow = refresh_flow(handle)
    assert await proxy.request(flow)
    return fields, handle, flow


async def assert_refused(proxy: Proxy, flow: http.HTTPFlow, status: int, error: str | None) -> dict[str, Any]:
    """The proxy answers ``flow`` itself, with an RFC error; nothing goes upstream."""
    assert not await proxy.request(flow)
    assert flow.response is not None
    return assert_error(flow.response, status, error)


def assert_no_jwt(raw: bytes, *tokens: str) -> None:
    """No compact JWS in ``raw``, nor the whole, the signing input or the claims of any of ``tokens``."""
    text = raw.decode("utf-8", "replace")
    assert list(jws.find_jws(text)) == []
    for t in tokens:
        for part in (t, t.rpartition(".")[0], t.split(".")[1]):
            assert part.encode() not in raw


@pytest.fixture
async def proxy(tmp_path: Any) -> AsyncIterator[Proxy]:
    with driven_addon(tmp_path) as driver:
        yield driver


async def login(
    proxy: Proxy, fields: dict[str, Any] | None = None, **kw: Any
) -> tuple[dict[str, Any], http.Response]:
    """A password grant whose answer is ``fields``; returns what the IdP sent and what the client got."""
    fields = fields if fields is not None else token_fields()
    return fields, await proxy.exchange(token_flow(), json_response(fields, **kw))


# -----------------------------------------------------------------------------------------------------------
# Token responses: split


async def test_json_token_response_is_split(proxy: Proxy) -> None:
    fields, client = await login(proxy, headers={"X-Provider": "keycloak", "ETag": '"abc"'})
    body = body_of(client)
    access = fields["access_token"]
    assert body["access_token"] == sig(access)
    assert is_handle(body["refresh_token"])
    assert body["refresh_token"] != fields["refresh_token"]
    assert body["id_token"] == fields["id_token"]  # meant for the client: unchanged
    for name in ("token_type", "expires_in", "refresh_expires_in", "scope", "session_state"):
        assert body[name] == fields[name]
    assert set(body) == set(fields)
    assert client.headers["X-Request-Id"] == "req-42"
    assert client.headers["X-Provider"] == "keycloak"
    assert client.headers["Content-Type"] == "application/json"
    assert client.headers["Cache-Control"] == "no-store"
    assert client.headers["Pragma"] == "no-cache"
    assert "ETag" not in client.headers
    assert int(client.headers["Content-Length"]) == len(client.raw_content or b"")
    raw = client.raw_content or b""
    assert access.rpartition(".")[0].encode() not in raw
    assert fields["refresh_token"].encode() not in raw
    assert proxy.records == 2
    assert proxy.addon.counters["splits"] == 1

    flow = api_flow(f"Bearer {body['access_token']}")
    assert await proxy.request(flow)
    assert flow.request.headers["Authorization"] == f"Bearer {access}"


async def test_form_token_response_is_split(proxy: Proxy) -> None:
    fields = token_fields()
    client = await proxy.exchange(token_flow(), form_response(fields))
    assert client.headers["Content-Type"] == "application/x-www-form-urlencoded"
    body = body_of(client)
    assert body["access_token"] == sig(fields["access_token"])
    assert is_handle(body["refresh_token"])
    assert body["id_token"] == fields["id_token"]
    assert body["expires_in"] == "300"
    assert client.headers["Cache-Control"] == "no-store"
    assert int(client.headers["Content-Length"]) == len(client.raw_content or b"")
    assert_no_jwt(
        (client.raw_content or b"").replace(fields["id_token"].encode(), b""), fields["access_token"]
    )


async def test_gzip_token_response_is_split_and_stays_gzip(proxy: Proxy) -> None:
    fields = token_fields()
    upstream = json_response(fields)
    upstream.encode("gzip")
    assert upstream.raw_content != upstream.content
    client = await proxy.exchange(token_flow(), upstream)
    assert client.headers["Content-Encoding"] == "gzip"
    raw = client.raw_content or b""
    assert int(client.headers["Content-Length"]) == len(raw)
    body = json.loads(gzip.decompress(raw))
    assert body["access_token"] == sig(fields["access_token"])
    assert is_handle(body["refresh_token"])


async def test_opaque_access_token_passes_byte_for_byte(proxy: Proxy) -> None:
    fields = {"access_token": "opaque-" + "x" * 40, "token_type": "Bearer", "expires_in": 60}
    upstream = json_response(
        fields, raw=b'{ "access_token":"opaque-' + b"x" * 40 + b'", "token_type" : "Bearer"}'
    )
    before = upstream.copy()
    client = await proxy.exchange(token_flow(), upstream)
    assert client.raw_content == before.raw_content
    assert client.headers.fields == before.headers.fields
    assert proxy.records == 0


async def test_opaque_access_token_with_refresh_token_keeps_access_and_hides_refresh(proxy: Proxy) -> None:
    fields = {"access_token": "a.b.c", "refresh_token": "r" * 50, "token_type": "Bearer"}
    client = await proxy.exchange(token_flow(), json_response(fields))
    body = body_of(client)
    assert body["access_token"] == "a.b.c"
    assert is_handle(body["refresh_token"])
    assert proxy.records == 1


async def test_jwe_access_token_passes_byte_for_byte(proxy: Proxy) -> None:
    header = jwt.utils.base64url_encode(b'{"alg":"RSA-OAEP-256","enc":"A256GCM"}').decode()
    jwe = f"{header}.{'Q' * 342}.{'SVZJVklWSVZJVg'}.{'Y2lwaGVy' * 20}.{'dGFndGFndGFndGFn'}"
    raw = json.dumps({"access_token": jwe, "token_type": "Bearer", "id_token": make_jwt()}).encode()
    upstream = json_response(None, raw=raw)
    client = await proxy.exchange(token_flow(), upstream)
    assert client.raw_content == raw
    assert "Pragma" not in client.headers
    assert proxy.records == 0


async def test_id_token_only_passes_unchanged(proxy: Proxy) -> None:
    raw = json.dumps({"id_token": make_jwt(), "token_type": "Bearer"}).encode()
    client = await proxy.exchange(token_flow(), json_response(None, raw=raw))
    assert client.raw_content == raw


async def test_id_token_must_not_carry_the_access_token_out(proxy: Proxy) -> None:
    # A provider that answers the same JWT as access_token and id_token: the id_token exemption would hand
    # the client the whole access token, which then works at the API without the proxy.
    access = make_jwt()
    client = await proxy.exchange(token_flow(), json_response({"access_token": access, "id_token": access}))
    assert access.encode() not in (client.raw_content or b"")


async def test_jwt_refresh_token_is_replaced(proxy: Proxy) -> None:
    refresh = make_jwt(typ="Refresh", exp=int(time.time()) + 1800)
    fields = token_fields(refresh_token=refresh)
    _, client = await login(proxy, fields)
    body = body_of(client)
    assert is_handle(body["refresh_token"])
    assert_no_jwt((client.raw_content or b"").replace(fields["id_token"].encode(), b""), refresh)


async def test_refresh_token_only_response_is_replaced(proxy: Proxy) -> None:
    client = await proxy.exchange(token_flow(), json_response({"refresh_token": "R" * 30}))
    assert is_handle(body_of(client)["refresh_token"])
    assert client.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("status", [201, 204])
async def test_other_2xx_are_split_too(proxy: Proxy, status: int) -> None:
    fields = token_fields()
    client = await proxy.exchange(token_flow(), json_response(fields, status=status))
    assert body_of(client)["access_token"] == sig(fields["access_token"])


@pytest.mark.parametrize("status", [301, 304, 400, 401, 403, 404, 429, 500, 503])
async def test_non_2xx_token_responses_pass_unchanged(proxy: Proxy, status: int) -> None:
    raw = b'{"error":"invalid_client","error_description":"bad client"}'
    upstream = json_response(None, status=status, raw=raw)
    before = upstream.copy()
    client = await proxy.exchange(token_flow(), upstream)
    assert client.status_code == status
    assert client.raw_content == before.raw_content
    assert client.headers.fields == before.headers.fields


def _unsigned(token: str) -> str:
    return token.rpartition(".")[0] + "."


def _alg_none() -> str:
    return jwt.encode({"sub": "alice", "exp": int(time.time()) + 300}, None, algorithm="none")


@pytest.mark.parametrize(
    "make_access",
    [
        _alg_none,
        lambda: _alg_none() + "c2ln",
        lambda: _unsigned(make_jwt()),
        lambda: make_jwt(exp=int(time.time()) - 60),
        lambda: make_jwt(exp="tomorrow"),
        lambda: make_jwt("HS256", b"k" * 32),  # allowed by default, refused below by splittoken_algorithms
        lambda: "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln",  # payload not JSON
    ],
    ids=["none", "none-signed", "empty-signature", "expired", "exp-string", "hs256", "payload"],
)
async def test_refused_tokens_answer_502_and_store_nothing(proxy: Proxy, make_access: Any) -> None:
    proxy.configure(splittoken_algorithms=["RS256", "ES256"])
    access = make_access()
    fields = token_fields(access_token=access)
    _, client = await login(proxy, fields)
    assert_error(client, 502, "server_error")
    assert proxy.records == 0
    assert_no_jwt(client.content or b"", access, fields["id_token"])
    assert fields["refresh_token"].encode() not in (client.content or b"")
    assert client.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "fields",
    [
        {"access_token": "opaque", "other": "{jwt}"},
        {"access_token": "opaque", "nested": {"deep": ["{jwt}"]}},
        {"access_token": {"value": "{jwt}"}},
        {"access_token": "opaque", "{jwt}": 1},
        {"access_token": " {jwt} "},
        {"access_token": "opaque", "note": "x.{jwt}.y"},
    ],
)
async def test_jws_anywhere_else_is_refused(proxy: Proxy, fields: dict[str, Any]) -> None:
    token = make_jwt()
    raw = json.dumps(fields).replace("{jwt}", token).encode()
    client = await proxy.exchange(token_flow(), json_response(None, raw=raw))
    assert_error(client, 502, "server_error")
    assert_no_jwt(client.content or b"", token)


@pytest.mark.parametrize(
    ("ctype", "template"),
    [
        ("application/json", b'{"access_token": "{jwt}", "access_token": "x"}'),  # duplicate member
        ("application/json", b'{"access_token": "{jwt}"'),  # truncated
        ("application/json", b'["{jwt}"]'),
        ("text/html", b"<html><body>token: {jwt}</body></html>"),
        ("application/json", b'{"access_token": "{jwt}", "name": "\xff"}'),  # not UTF-8
        ("application/x-www-form-urlencoded", b"access_token={jwt}&access_token=x"),
        ("application/jwt", b"{jwt}"),
    ],
)
async def test_unparseable_200_with_a_jws_is_refused(proxy: Proxy, ctype: str, template: bytes) -> None:
    token = make_jwt()
    raw = template.replace(b"{jwt}", token.encode())
    client = await proxy.exchange(token_flow(), json_response(None, raw=raw, headers={"Content-Type": ctype}))
    assert_error(client, 502, "server_error")
    assert_no_jwt(client.content or b"", token)


def _lenient_strings(content: bytes) -> list[str]:
    """What a lenient client (JSON.parse: last duplicate wins; any form parser) reads out of a body."""
    text = content.decode("utf-8", "replace")
    found = [text]
    try:
        found += [json.dumps(json.loads(text))]
        found += [str(json.loads(text))]
    except ValueError:
        pass
    found += [v for _, v in urllib.parse.parse_qsl(text, keep_blank_values=True)]
    return found


@pytest.mark.parametrize(
    ("ctype", "template"),
    [
        # Unparseable only for the duplicate: the escape \u0065 is "e", so the raw text holds "u0065yJhbGc…",
        # which the raw scan does not see as a JWS; JSON.parse in the client keeps the last member: the JWT.
        ("application/json", b'{"access_token": "x", "access_token": "\\u0065{rest}"}'),
        ("application/json", b'["\\u0065{rest}"]'),  # not an object, so unparseable for the proxy
        ("application/json", b'{"a": 1, "a": 2, "note": "\\n{jwt}"}'),
        ("application/x-www-form-urlencoded", b"access_token=x&access_token=%65{rest}"),
        ("application/x-www-form-urlencoded", b"a=1&a=2&note=%3A{jwt}"),
    ],
)
async def test_escaped_jws_in_unparseable_body_is_refused(proxy: Proxy, ctype: str, template: bytes) -> None:
    token = make_jwt()
    raw = template.replace(b"{rest}", token[1:].encode()).replace(b"{jwt}", token.encode())
    upstream = json_response(None, raw=raw, headers={"Content-Type": ctype})
    client = await proxy.exchange(token_flow(), upstream)
    for text in _lenient_strings(client.content or b""):
        assert token not in text
        assert list(jws.find_jws(text)) == []


@pytest.mark.parametrize("ctype", ["application/json", "", "text/plain"])
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-be"])
async def test_utf16_token_response_does_not_carry_the_jwt_out(
    proxy: Proxy, encoding: str, ctype: str
) -> None:
    # JSON in UTF-16/32 is not UTF-8 (or is "UTF-8" full of NULs, which without a JSON content type passed for
    # a one-field form): the scan for a JWS must not read it as UTF-8 only, where the NUL bytes break up the
    # token, or a client that detects the encoding (requests' .json() does) reads the whole access token.
    token = make_jwt()
    raw = json.dumps({"access_token": token, "token_type": "Bearer", "x": "a=b"}).encode(encoding)
    client = await proxy.exchange(token_flow(), json_response(None, raw=raw, headers={"Content-Type": ctype}))
    for enc in ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"):
        assert token not in (client.content or b"").decode(enc, "ignore"), enc


@pytest.mark.parametrize(
    ("ctype", "raw"),
    [
        ("text/html", b"<html>Service temporarily down</html>"),
        ("application/json", b"[1, 2, 3]"),
        ("application/json", b'{"a": 1, "a": 2}'),
        ("application/json", b""),
        ("application/octet-stream", bytes(range(256))),
        ("application/json", b'{"n": 1' + b"0" * 5000 + b"}"),
        ("application/json", b"[" * 50_000 + b"]" * 50_000),
    ],
)
async def test_unparseable_200_without_a_jws_passes_unchanged(proxy: Proxy, ctype: str, raw: bytes) -> None:
    upstream = json_response(None, raw=raw, headers={"Content-Type": ctype})
    client = await proxy.exchange(token_flow(), upstream)
    assert client.status_code == 200
    assert client.raw_content == raw


async def test_oversize_response_is_refused(proxy: Proxy) -> None:
    proxy.configure(splittoken_max_body=200)
    fields = token_fields()
    _, client = await login(proxy, fields)
    assert_error(client, 502, "server_error")
    assert "too large" in client.text
    assert proxy.records == 0
    assert_no_jwt(client.content or b"", fields["access_token"])


async def test_oversize_after_decompression_is_refused(proxy: Proxy) -> None:
    proxy.configure(splittoken_max_body=4096)
    fields = token_fields(padding=" " * 100_000)
    upstream = json_response(fields)
    upstream.encode("gzip")
    assert len(upstream.raw_content or b"") < 4096
    client = await proxy.exchange(token_flow(), upstream)
    assert_error(client, 502, "server_error")
    assert proxy.records == 0


async def test_second_gzip_member_cannot_smuggle_a_jwt(proxy: Proxy) -> None:
    # The proxy (like mitmproxy's decoder) reads the first gzip member only; Python's gzip and urllib3 read
    # them all. The first member alone is unparseable and holds no JWS, so it used to pass unchanged.
    token = make_jwt()
    raw = gzip.compress(b'{"access_token": "opaque", "note": "') + gzip.compress(f'{token}"}}'.encode())
    upstream = json_response(None, raw=b"")
    upstream.headers["Content-Encoding"] = "gzip"
    upstream.raw_content = raw  # as sent: Response.make would gzip it once more
    assert token.encode() in gzip.decompress(raw)  # what a Python client would read
    client = await proxy.exchange(token_flow(), upstream)
    assert_error(client, 502, "server_error")
    assert_no_jwt(client.content or b"", token)


async def test_broken_content_encoding_is_refused(proxy: Proxy) -> None:
    upstream = json_response(token_fields())
    upstream.headers["Content-Encoding"] = "gzip"  # claims gzip, is not
    client = await proxy.exchange(token_flow(), upstream)
    assert client.status_code == 502
    assert proxy.records == 0


async def test_non_string_refresh_token_is_refused(proxy: Proxy) -> None:
    fields = token_fields(refresh_token={"value": "x"})
    _, client = await login(proxy, fields)
    assert_error(client, 502, "server_error")
    assert proxy.records == 0


async def test_token_route_in_reverse_mode_is_not_an_api_route(proxy: Proxy) -> None:
    fields = token_fields()
    flow = token_flow(url="http://idp.example/token", mode=REVERSE_IDP)
    client = await proxy.exchange(flow, json_response(fields))
    assert body_of(client)["access_token"] == sig(fields["access_token"])


# -----------------------------------------------------------------------------------------------------------
# API route: handle in, JWT out


async def test_api_join_bearer_and_bare(proxy: Proxy) -> None:
    fields, client = await login(proxy)
    handle = body_of(client)["access_token"]
    for value in (f"Bearer {handle}", f"bearer {handle}", handle):
        flow = api_flow(value)
        assert await proxy.request(flow)
        assert flow.request.headers.get_all("Authorization") == [f"Bearer {fields['access_token']}"]
        assert flow.comment.startswith("split-token: re-joined")
        assert fields["access_token"] not in flow.comment
    assert proxy.addon.counters["joins"] == 3


async def test_unknown_handle_is_refused_and_not_forwarded(proxy: Proxy) -> None:
    await login(proxy)
    flow = api_flow("Bearer " + "A" * 43)
    await assert_refused(proxy, flow, 401, "invalid_token")
    challenge = flow.response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="splittoken", error="invalid_token"')
    assert flow.request.headers["Authorization"] == "Bearer " + "A" * 43
    assert flow.marked


async def test_refresh_handle_on_api_route_is_refused(proxy: Proxy) -> None:
    _, client = await login(proxy)
    flow = api_flow(f"Bearer {body_of(client)['refresh_token']}")
    await assert_refused(proxy, flow, 401, "invalid_token")


async def test_client_jwt_is_refused_unless_allowed(proxy: Proxy) -> None:
    token = make_jwt()
    flow = api_flow(f"Bearer {token}")
    await assert_refused(proxy, flow, 401, "invalid_token")
    proxy.configure(splittoken_allow_client_jwt=True)
    flow = api_flow(f"Bearer {token}")
    assert await proxy.request(flow)
    assert flow.request.headers["Authorization"] == f"Bearer {token}"


async def test_no_authorization_is_a_challenge_without_error(proxy: Proxy) -> None:
    flow = api_flow()
    assert not await proxy.request(flow)
    assert flow.response is not None
    assert flow.response.status_code == 401
    assert flow.response.headers["WWW-Authenticate"] == 'Bearer realm="splittoken"'
    assert "error" not in json.loads(flow.response.content or b"")


@pytest.mark.parametrize(
    "authorization",
    [["Basic YWxpY2U6cHc="], ["DPoP abc"], ["Bearer a", "Bearer b"], [""], ["Bearer a+b/c="]],
)
async def test_malformed_authorization_is_400(proxy: Proxy, authorization: list[str]) -> None:
    flow = api_flow(*authorization)
    await assert_refused(proxy, flow, 400, "invalid_request")


async def test_regular_mode_with_empty_api_filter_is_untouched(proxy: Proxy) -> None:
    _, client = await login(proxy)
    handle = body_of(client)["access_token"]
    for mode in (None, "regular", "transparent", "socks5", "upstream:http://up.example:8080"):
        flow = api_flow(f"Bearer {handle}", mode=mode)
        assert await proxy.request(flow)
        assert flow.request.headers["Authorization"] == f"Bearer {handle}"
        assert "splittoken" not in flow.metadata
        flow = api_flow(mode=mode)  # no credentials: not our business either
        assert await proxy.request(flow)


async def test_anchored_api_filter_joins_only_that_host(proxy: Proxy) -> None:
    proxy.configure(splittoken_api_filter=r"~d ^api\.example\.com$")
    fields, client = await login(proxy)
    handle = body_of(client)["access_token"]
    flow = api_flow(f"Bearer {handle}", url="http://api.example.com/items", mode=None)
    assert await proxy.request(flow)
    assert flow.request.headers["Authorization"] == f"Bearer {fields['access_token']}"
    for url in (
        "http://api.example.com.evil.net/items",
        "http://evil.net/api.example.com",
        "http://xapi.example.com/",
    ):
        flow = api_flow(f"Bearer {handle}", url=url, mode=None)
        assert await proxy.request(flow)
        assert flow.request.headers["Authorization"] == f"Bearer {handle}", url


async def test_anchored_api_filter_is_not_fooled_by_a_host_header(proxy: Proxy) -> None:
    # ~d also matches pretty_host, i.e. the Host header, which the client writes: a request sent to
    # evil.net with "Host: api.example.com" matches the anchored filter, and the JWT goes to evil.net.
    proxy.configure(splittoken_api_filter=r"~d ^api\.example\.com$")
    fields, client = await login(proxy)
    handle = body_of(client)["access_token"]
    flow = api_flow(f"Bearer {handle}", url="http://evil.net/steal", mode=None, host="api.example.com")
    assert flow.request.host == "evil.net"
    await proxy.request(flow)
    assert fields["access_token"] not in flow.request.headers.get("Authorization", "")


def test_unanchored_domain_warning_is_logged(caplog: pytest.LogCaptureFixture, tmp_path: Any) -> None:
    addon = SplitToken()
    with taddons.context(addon) as tctx:
        tctx.options.update(confdir=str(tmp_path))
        with caplog.at_level(logging.WARNING, logger="splittoken"):
            tctx.configure(addon, splittoken_api_filter="~d api.example.com")
        assert any("unanchored" in r.getMessage() for r in caplog.records)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="splittoken"):
            tctx.configure(addon, splittoken_api_filter=r"~d ^api\.example\.com$")
        assert not any("unanchored" in r.getMessage() for r in caplog.records)
        addon.done()


def test_unanchored_domain() -> None:
    assert addon_module.unanchored_domain("~d api.example.com")
    assert addon_module.unanchored_domain("~m GET & (~d api.example.com)")
    assert addon_module.unanchored_domain('~d "^api.example.com"')
    assert not addon_module.unanchored_domain(r"~d ^api\.example\.com$")
    assert not addon_module.unanchored_domain(r'~d "^api\.example\.com$" & ~m GET')
    assert not addon_module.unanchored_domain("~u /api")


@pytest.mark.parametrize(
    "options",
    [
        {"splittoken_api_filter": "~d ("},
        {"splittoken_token_filter": "~u ("},
        {"splittoken_revoke_filter": "~nonsense"},
        {"splittoken_algorithms": ["none"]},
        {"splittoken_algorithms": ["RS256", "XX999"]},
        {"splittoken_algorithms": []},
        {"splittoken_max_ttl": -1},
        {"splittoken_max_ttl": 0},
        {"splittoken_refresh_max_ttl": -5},
        {"splittoken_refresh_grace": -1},
        {"splittoken_leeway": -1},
        {"splittoken_max_body": 0},
        {"splittoken_store_timeout_ms": 0},
        {"splittoken_jwks_url": "file:///etc/passwd"},
        {"splittoken_store": "redis://"},
    ],
)
async def test_bad_options_raise(proxy: Proxy, options: dict[str, Any]) -> None:
    with pytest.raises(exceptions.OptionsError):
        proxy.configure(**options)


# -----------------------------------------------------------------------------------------------------------
# Refresh grants


async def test_refresh_form_swaps_handle_for_real_token_and_rotates(proxy: Proxy, monkeypatch: Any) -> None:
    fields, client = await login(proxy)
    first = body_of(client)
    handle = first["refresh_token"]

    flow = refresh_flow(handle)
    assert await proxy.request(flow)
    sent = dict(urllib.parse.parse_qsl(flow.request.get_text() or ""))
    assert sent == {
        "grant_type": "refresh_token",
        "refresh_token": fields["refresh_token"],
        "client_id": "demo",
    }
    rotated = token_fields(refresh_token="rotated-" + "z" * 40)
    answer = await proxy.respond(flow, json_response(rotated))
    second = body_of(answer)
    assert second["access_token"] == sig(rotated["access_token"])
    assert is_handle(second["refresh_token"])
    assert second["refresh_token"] not in (handle, rotated["refresh_token"])
    assert proxy.addon.counters["refreshes"] == 1

    # Within the grace period the old handle replays the same answer, without going upstream.
    late = refresh_flow(handle)
    assert not await proxy.request(late)
    assert late.response is not None
    assert late.response.status_code == 200
    assert body_of(late.response) == second
    assert late.response.headers["Cache-Control"] == "no-store"

    # The new refresh handle works and carries the rotated token upstream.
    flow = refresh_flow(second["refresh_token"])
    assert await proxy.request(flow)
    assert (
        dict(urllib.parse.parse_qsl(flow.request.get_text() or ""))["refresh_token"]
        == rotated["refresh_token"]
    )

    # After the grace period the old handle is refused.
    assert proxy.addon.vault
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 11)
    proxy.addon.vault.clock = time.time
    after = refresh_flow(handle)
    await assert_refused(proxy, after, 400, "invalid_grant")


async def test_refresh_json_request_body(proxy: Proxy) -> None:
    fields, client = await login(proxy)
    flow = refresh_flow(body_of(client)["refresh_token"], json_body=True)
    assert await proxy.request(flow)
    sent = json.loads(flow.request.content or b"")
    assert sent["refresh_token"] == fields["refresh_token"]
    assert sent["grant_type"] == "refresh_token"
    assert sent["client_id"] == "demo"


async def test_refresh_without_rotation_keeps_the_handle(proxy: Proxy) -> None:
    fields, handle, flow = await refreshing(proxy)
    again = token_fields(refresh_token=fields["refresh_token"])
    answer = await proxy.respond(flow, json_response(again))
    assert body_of(answer)["refresh_token"] == handle
    assert body_of(answer)["access_token"] == sig(again["access_token"])
    flow = refresh_flow(handle)
    assert await proxy.request(flow)  # still a live refresh handle, not a replay


async def test_refresh_without_rotation_and_opaque_access_token_keeps_the_refresh_token_hidden(
    proxy: Proxy,
) -> None:
    # Opaque (or JWE) access tokens and a provider that does not rotate refresh tokens: the answer to a
    # refresh has no record to store, and "nothing to store" means "pass the response unchanged", real
    # refresh token included.
    real = "real-refresh-" + "q" * 40
    _, client = await login(
        proxy, {"access_token": "opaque-1", "refresh_token": real, "token_type": "Bearer"}
    )
    handle = body_of(client)["refresh_token"]
    assert is_handle(handle)
    flow = refresh_flow(handle)
    assert await proxy.request(flow)
    answer = await proxy.respond(flow, json_response({"access_token": "opaque-2", "refresh_token": real}))
    assert real.encode() not in (answer.raw_content or b"")
    assert body_of(answer)["refresh_token"] == handle
    assert body_of(answer)["access_token"] == "opaque-2"


async def test_refresh_with_grace_zero_forgets_the_old_handle(proxy: Proxy) -> None:
    proxy.configure(splittoken_refresh_grace=0)
    _, handle, flow = await refreshing(proxy)
    await proxy.respond(flow, json_response(token_fields(refresh_token="new-" + "n" * 40)))
    late = refresh_flow(handle)
    await assert_refused(proxy, late, 400, "invalid_grant")


@pytest.mark.parametrize(
    "presented",
    ["A" * 43, "not a handle", "x.y.z", "", "ü", "A" * 5000],
    ids=["unknown", "sp", "dots", "empty", "u", "long"],
)
async def test_unknown_refresh_handle_is_refused_without_upstream(proxy: Proxy, presented: str) -> None:
    await login(proxy)
    flow = refresh_flow(presented)
    await assert_refused(proxy, flow, 400, "invalid_grant")
    assert "WWW-Authenticate" not in flow.response.headers


async def test_jwt_or_access_handle_as_refresh_token_is_refused(proxy: Proxy) -> None:
    fields, client = await login(proxy)
    for presented in (fields["access_token"], body_of(client)["access_token"], fields["refresh_token"]):
        flow = refresh_flow(presented)
        await assert_refused(proxy, flow, 400, "invalid_grant")


async def test_invalid_grant_from_idp_forgets_the_handle(proxy: Proxy) -> None:
    _, handle, flow = await refreshing(proxy)
    raw = b'{"error":"invalid_grant","error_description":"Token is not active"}'
    answer = await proxy.respond(flow, json_response(None, status=400, raw=raw))
    assert answer.status_code == 400
    assert answer.raw_content == raw
    flow = refresh_flow(handle)
    await assert_refused(proxy, flow, 400, "invalid_grant")


async def test_other_refresh_errors_keep_the_handle(proxy: Proxy) -> None:
    _, handle, flow = await refreshing(proxy)
    await proxy.respond(flow, json_response(None, status=503, raw=b'{"error":"temporarily_unavailable"}'))
    assert await proxy.request(refresh_flow(handle))


async def test_concurrent_refreshes_share_one_upstream_call(proxy: Proxy) -> None:
    _, handle, first = await refreshing(proxy)
    second = refresh_flow(handle)
    waiting = asyncio.create_task(proxy.request(second))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    answer = await proxy.respond(first, json_response(token_fields(refresh_token="new-" + "n" * 40)))
    assert not await waiting
    assert second.response is not None
    assert body_of(second.response) == body_of(answer)


async def test_upstream_error_releases_waiting_refreshes(proxy: Proxy) -> None:
    _, handle, first = await refreshing(proxy)
    second = refresh_flow(handle)
    waiting = asyncio.create_task(proxy.request(second))
    await asyncio.sleep(0.01)
    proxy.addon.error(first)
    assert not await waiting
    assert second.response is not None
    assert second.response.status_code == 502


async def test_refresh_handle_is_not_sent_to_another_authorization_server(proxy: Proxy) -> None:
    # The default token filter matches any host's .../token. In regular (forward) proxy mode a client - or a
    # script that stole a refresh handle - sends it to a token endpoint of its choosing, and the proxy swaps
    # in the real refresh token on the way there.
    fields, client = await login(proxy)
    flow = refresh_flow(body_of(client)["refresh_token"], url="http://evil.example/token")
    await proxy.request(flow)
    assert fields["refresh_token"] not in (flow.request.get_text() or "")


# -----------------------------------------------------------------------------------------------------------
# Revocation (RFC 7009)


@pytest.mark.parametrize("hint", [None, "access_token", "refresh_token"])
async def test_revoke_access_handle(proxy: Proxy, hint: str | None) -> None:
    fields, client = await login(proxy)
    handle = body_of(client)["access_token"]
    flow = revoke_flow(handle, hint)
    assert await proxy.request(flow)
    sent = dict(urllib.parse.parse_qsl(flow.request.get_text() or ""))
    assert sent["token"] == fields["access_token"]  # the IdP gets the whole JWT
    if hint:
        assert sent["token_type_hint"] == "access_token"
    answer = await proxy.respond(flow, http.Response.make(200, b""))
    assert answer.status_code == 200
    api = api_flow(f"Bearer {handle}")
    await assert_refused(proxy, api, 401, "invalid_token")
    assert proxy.addon.counters["revocations"] == 1


async def test_revoke_refresh_handle(proxy: Proxy) -> None:
    fields, client = await login(proxy)
    handle = body_of(client)["refresh_token"]
    flow = revoke_flow(handle, "refresh_token")
    assert await proxy.request(flow)
    sent = dict(urllib.parse.parse_qsl(flow.request.get_text() or ""))
    assert sent == {"token": fields["refresh_token"], "token_type_hint": "refresh_token"}
    await proxy.respond(flow, http.Response.make(200, b""))
    again = refresh_flow(handle)
    await assert_refused(proxy, again, 400, "invalid_grant")


async def test_revoke_rotated_handle_is_answered_locally(proxy: Proxy) -> None:
    _, handle, flow = await refreshing(proxy)
    await proxy.respond(flow, json_response(token_fields(refresh_token="new-" + "n" * 40)))
    revoke = revoke_flow(handle)
    assert not await proxy.request(revoke)
    assert revoke.response is not None
    assert revoke.response.status_code == 200
    late = refresh_flow(handle)
    await assert_refused(proxy, late, 400, "invalid_grant")


@pytest.mark.parametrize(("kind", "status"), [("access_token", 200), ("refresh_token", 400)])
async def test_unsupported_token_type_becomes_200_only_for_access_handles(
    proxy: Proxy, kind: str, status: int
) -> None:
    """Only the proxy ever held the access JWT, so for the client it is revoked; a refresh token is not."""
    _, client = await login(proxy)
    flow = revoke_flow(body_of(client)[kind])
    assert await proxy.request(flow)
    raw = b'{"error":"unsupported_token_type","error_description":"no"}'
    answer = await proxy.respond(flow, json_response(None, status=400, raw=raw))
    assert answer.status_code == status
    if status == 200:
        assert answer.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("token", ["A" * 43, "opaque-token-from-idp", "a.b.c", ""])
async def test_revoke_of_unknown_token_passes_unchanged(proxy: Proxy, token: str) -> None:
    flow = revoke_flow(token, "access_token")
    before = flow.request.content
    assert await proxy.request(flow)
    assert flow.request.content == before


async def test_revoked_access_token_is_not_sent_to_another_host(proxy: Proxy) -> None:
    # Same as refresh: a revocation to any host's .../revoke gets the whole JWT joined into its body.
    fields, client = await login(proxy)
    flow = revoke_flow(body_of(client)["access_token"], url="http://evil.example/revoke")
    await proxy.request(flow)
    assert fields["access_token"] not in (flow.request.get_text() or "")


# -----------------------------------------------------------------------------------------------------------
# Failures: fail closed


def _store_down(*_: Any) -> Any:
    raise StoreUnavailable("store down (test)")


async def test_store_write_failure_on_token_route_is_503(proxy: Proxy, monkeypatch: Any) -> None:
    assert proxy.addon.vault
    monkeypatch.setattr(proxy.addon.vault.store, "put", _store_down)
    fields = token_fields()
    _, client = await login(proxy, fields)
    body = assert_error(client, 503, "temporarily_unavailable")
    assert client.headers["Retry-After"].isdigit()
    raw = client.content or b""
    assert_no_jwt(raw, fields["access_token"], fields["id_token"])
    assert fields["refresh_token"].encode() not in raw
    assert sig(fields["access_token"]) not in json.dumps(body)  # no handle either


async def test_store_read_failure_on_api_route_is_503_and_not_forwarded(
    proxy: Proxy, monkeypatch: Any
) -> None:
    _, client = await login(proxy)
    handle = body_of(client)["access_token"]
    assert proxy.addon.vault
    monkeypatch.setattr(proxy.addon.vault.store, "get", _store_down)
    flow = api_flow(f"Bearer {handle}")
    await assert_refused(proxy, flow, 503, "temporarily_unavailable")
    assert "Retry-After" in flow.response.headers
    assert flow.request.headers["Authorization"] == f"Bearer {handle}"


async def test_store_failure_on_refresh_is_503_without_upstream(proxy: Proxy, monkeypatch: Any) -> None:
    fields, client = await login(proxy)
    assert proxy.addon.vault
    monkeypatch.setattr(proxy.addon.vault.store, "get", _store_down)
    flow = refresh_flow(body_of(client)["refresh_token"])
    await assert_refused(proxy, flow, 503, "temporarily_unavailable")
    assert fields["refresh_token"] not in (flow.request.get_text() or "")


async def test_store_failure_on_revoke_is_503(proxy: Proxy, monkeypatch: Any) -> None:
    _, client = await login(proxy)
    assert proxy.addon.vault
    monkeypatch.setattr(proxy.addon.vault.store, "delete", _store_down)
    flow = revoke_flow(body_of(client)["access_token"])
    await assert_refused(proxy, flow, 503, "temporarily_unavailable")


async def test_unexpected_exception_in_token_response_is_502(proxy: Proxy, monkeypatch: Any) -> None:
    def boom(*_: Any, **__: Any) -> Any:
        raise RuntimeError("eyJhbGciOiJSUzI1NiJ9 leaked in a message")

    monkeypatch.setattr(addon_module.policy, "expiry", boom)
    fields = token_fields()
    _, client = await login(proxy, fields)
    assert_error(client, 502, "server_error")
    assert_no_jwt(client.content or b"", fields["access_token"], fields["id_token"])
    assert proxy.records == 0


async def test_unexpected_exception_in_api_route_is_not_forwarded(proxy: Proxy, monkeypatch: Any) -> None:
    _, client = await login(proxy)
    handle = body_of(client)["access_token"]
    monkeypatch.setattr(addon_module.jws, "join", lambda *_: 1 / 0)
    flow = api_flow(f"Bearer {handle}")
    assert not await proxy.request(flow)
    assert flow.response is not None
    assert flow.response.status_code >= 500


# -----------------------------------------------------------------------------------------------------------
# Streaming and local answers


async def test_token_route_is_never_streamed(proxy: Proxy) -> None:
    flow = token_flow()
    flow.request.stream = True
    flow.request.headers["Accept-Encoding"] = "gzip, br"
    proxy.addon.requestheaders(flow)
    assert flow.request.stream is False
    assert flow.request.headers["Accept-Encoding"] == "identity"
    flow.response = json_response(token_fields())
    flow.response.stream = True
    proxy.addon.responseheaders(flow)
    assert flow.response.stream is False


async def test_api_route_streaming_is_left_alone(proxy: Proxy) -> None:
    flow = api_flow("Bearer " + "A" * 43, mode=None)
    flow.request.stream = True
    result = proxy.addon.requestheaders(flow)
    assert result is None
    assert flow.request.stream is True
    flow.response = http.Response.make(200, b"x")
    flow.response.stream = True
    proxy.addon.responseheaders(flow)
    assert flow.response.stream is True


async def test_cycle_through_all_hooks(proxy: Proxy) -> None:
    fields, client = await login(proxy)
    flow = api_flow(f"Bearer {body_of(client)['access_token']}")
    flow.response = http.Response.make(200, b"ok")
    await proxy.tctx.cycle(proxy.addon, flow)
    assert flow.request.headers["Authorization"] == f"Bearer {fields['access_token']}"
    flow = tflow.tflow(err=True)  # the authorization server cannot be reached
    flow.request.url = f"{IDP}/token"
    flow.request.method = "POST"
    await proxy.tctx.cycle(proxy.addon, flow)
    assert flow.response is None
    assert flow.metadata["splittoken"]["route"] == "token"


async def test_flows_of_other_kinds_are_ignored(proxy: Proxy) -> None:
    flow = tflow.tflow(resp=True)
    before = flow.copy()
    await proxy.tctx.cycle(proxy.addon, flow)
    assert flow.request.headers == before.request.headers
    assert flow.response is not None and before.response is not None
    assert flow.response.content == before.response.content


# -----------------------------------------------------------------------------------------------------------
# Commands


async def test_commands(proxy: Proxy) -> None:
    _, client = await login(proxy)
    body = body_of(client)
    stats = proxy.tctx.master.commands.call("splittoken.stats")
    assert "records=2" in stats
    assert "splits=1" in stats
    assert body["access_token"] not in stats

    answer = proxy.tctx.master.commands.call("splittoken.revoke", body["access_token"])
    assert answer.startswith("revoked")
    assert body["access_token"] not in answer
    flow = api_flow(f"Bearer {body['access_token']}")
    assert not await proxy.request(flow)
    assert "no such handle" in proxy.tctx.master.commands.call("splittoken.revoke", body["access_token"])
    assert "revoked" in proxy.tctx.master.commands.call("splittoken.revoke", f" {body['refresh_token']} ")

    assert proxy.tctx.master.commands.call("splittoken.purge") == 0
    assert proxy.addon.vault
    store = proxy.addon.vault.store
    store.put("expired-key", b"x", time.time() + 0.05)
    await asyncio.sleep(0.1)
    assert proxy.tctx.master.commands.call("splittoken.purge") == 1
    assert "revocations=2" in proxy.tctx.master.commands.call("splittoken.stats")


async def test_stats_survives_a_store_outage(proxy: Proxy, monkeypatch: Any) -> None:
    assert proxy.addon.vault
    monkeypatch.setattr(proxy.addon.vault.store, "stats", _store_down)
    assert "store unavailable" in proxy.tctx.master.commands.call("splittoken.stats")


# -----------------------------------------------------------------------------------------------------------
# Edges found in review: preflights, TRACE, addresses as destinations, tokens outside the body


async def test_cors_preflight_passes_without_credentials(proxy: Proxy) -> None:
    flow = flow_for(
        "OPTIONS", API, headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"},
        mode=REVERSE_API,
    )  # fmt: skip
    assert await proxy.request(flow)
    assert "authorization" not in flow.request.headers


async def test_trace_is_refused_on_api_routes(proxy: Proxy) -> None:
    fields, client = await login(proxy)
    flow = api_flow(f"Bearer {body_of(client)['access_token']}")
    flow.request.method = "TRACE"
    await assert_refused(proxy, flow, 400, "invalid_request")
    assert fields["access_token"] not in flow.request.headers.get("authorization", "")


@pytest.mark.parametrize(
    ("scheme", "sni", "joined"),
    [("https", "api.example.com", True), ("https", "evil.net", False), ("http", None, False)],
)
async def test_address_destinations_are_checked_against_the_tls_server_name(
    proxy: Proxy, scheme: str, sni: str | None, joined: bool
) -> None:
    """Transparent-style modes: the destination is an address, and the name it answers to is the SNI."""
    proxy.configure(splittoken_api_filter=r"~d ^api\.example\.com$")
    fields, client = await login(proxy)
    flow = api_flow(
        f"Bearer {body_of(client)['access_token']}", url=f"{scheme}://203.0.113.7/orders", mode="transparent",
        host="api.example.com",
    )  # fmt: skip
    flow.client_conn.sni = sni
    await proxy.request(flow)
    assert (flow.request.headers["authorization"] == f"Bearer {fields['access_token']}") is joined
    if not joined:
        assert flow.response is not None and flow.response.status_code == 400


async def test_a_jws_in_a_token_response_header_is_refused(proxy: Proxy) -> None:
    fields = token_fields()
    _, client = await login(proxy, fields, headers={"X-Debug-Token": fields["access_token"]})
    assert_error(client, 502, "server_error")
    assert_no_jwt(client.content or b"", fields["access_token"])


async def test_an_error_response_holding_a_jws_is_refused(proxy: Proxy) -> None:
    fields = token_fields()
    error = {"error": "invalid_request", "error_description": f"bad token {fields['access_token']}"}
    _, client = await login(proxy, error, status=400)
    assert_error(client, 502, "server_error")


def test_token_filter_ignores_token_in_the_query(proxy: Proxy) -> None:
    assert proxy.addon._route(token_flow(url=f"{IDP}/login?next=/token")) is None
    assert proxy.addon._route(token_flow(url=f"{IDP}/token?x=1")) == "token"


async def test_an_empty_refresh_token_in_a_refresh_answer_keeps_the_handle(proxy: Proxy) -> None:
    fields, handle, flow = await refreshing(proxy)
    answer = await proxy.respond(flow, json_response(token_fields(refresh_token="")))
    assert answer.status_code == 200
    again = refresh_flow(handle)
    assert await proxy.request(again)  # still a live refresh handle, not a retired one
    assert fields["refresh_token"] in (again.request.get_text() or "")


@pytest.mark.parametrize("log_joins", [True, False])
async def test_one_log_line_per_join_unless_turned_off(
    proxy: Proxy, caplog: pytest.LogCaptureFixture, log_joins: bool
) -> None:
    proxy.configure(splittoken_log_joins=log_joins)
    _, client = await login(proxy)
    handle = body_of(client)["access_token"]
    with caplog.at_level(logging.INFO, logger="splittoken"):
        assert await proxy.request(api_flow(f"Bearer {handle}"))
    lines = [r.getMessage() for r in caplog.records if "joined" in r.getMessage()]
    assert lines == ([f"joined handle {handle[:6]}…"] if log_joins else [])
    assert handle not in caplog.text


@pytest.mark.parametrize(
    "path", ["/realms/demo/.well-known/openid-configuration", "/realms/demo/protocol/openid-connect/certs"]
)
async def test_public_discovery_and_keys_pass_without_credentials(proxy: Proxy, path: str) -> None:
    flow = flow_for("GET", f"http://idp.example{path}", mode=REVERSE_IDP)
    assert await proxy.request(flow)


async def test_public_paths_still_join_a_presented_handle(proxy: Proxy) -> None:
    fields, client = await login(proxy)
    flow = api_flow(f"Bearer {body_of(client)['access_token']}", url="http://api.example/.well-known/x")
    assert await proxy.request(flow)
    assert flow.request.headers["authorization"] == f"Bearer {fields['access_token']}"


async def test_empty_public_filter_makes_every_route_require_credentials(proxy: Proxy) -> None:
    proxy.configure(splittoken_public_filter="")
    flow = flow_for("GET", "http://idp.example/.well-known/openid-configuration", mode=REVERSE_IDP)
    await assert_refused(proxy, flow, 401, None)


async def test_refusal_logs_never_show_the_query(proxy: Proxy, caplog: pytest.LogCaptureFixture) -> None:
    secret = "q" * 43
    flow = api_flow("Bearer unknown", url=f"http://api.example/items?access_token={secret}")
    with caplog.at_level(logging.INFO, logger="splittoken"):
        await assert_refused(proxy, flow, 401, "invalid_token")
    assert "/items" in caplog.text and secret not in caplog.text


@pytest.mark.parametrize("redact", [True, False])
async def test_api_responses_echoing_the_jwt_are_redacted_when_asked(proxy: Proxy, redact: bool) -> None:
    proxy.configure(splittoken_redact_api_responses=redact)
    fields, client = await login(proxy)
    handle = body_of(client)["access_token"]
    flow = api_flow(f"Bearer {handle}")
    assert await proxy.request(flow)
    jwt_ = fields["access_token"]
    echoed = http.Response.make(
        200, json.dumps({"you sent": f"Bearer {jwt_}"}), {"X-Debug": jwt_, "Content-Type": "application/json"}
    )
    answer = await proxy.respond(flow, echoed)
    assert (jwt_ in answer.text) is not redact
    assert (answer.headers["X-Debug"] == jwt_) is not redact
    if redact:
        assert body_of(answer) == {"you sent": f"Bearer {handle}"} and answer.headers["X-Debug"] == handle


async def test_handles_are_bound_to_the_token_endpoint_name_not_its_address(proxy: Proxy) -> None:
    """Transparent mode: the provider answers from several addresses under one verified TLS name."""

    def via(address: str, sni: str, flow: http.HTTPFlow) -> http.HTTPFlow:
        flow.request.url = f"https://{address}{flow.request.path}"
        flow.request.headers["Host"] = "idp.example"
        flow.client_conn.sni = sni
        return flow

    fields = token_fields()
    client = await proxy.exchange(via("203.0.113.1", "idp.example", token_flow()), json_response(fields))
    handle = body_of(client)["refresh_token"]
    elsewhere = via("203.0.113.2", "idp.example", refresh_flow(handle))
    assert await proxy.request(elsewhere)
    assert fields["refresh_token"] in (elsewhere.request.get_text() or "")
    await proxy.respond(elsewhere, json_response(token_fields(refresh_token=fields["refresh_token"])))
    impostor = via("198.51.100.9", "evil.example", refresh_flow(handle))
    await assert_refused(proxy, impostor, 400, "invalid_grant")


def test_changing_the_leeway_keeps_the_open_store(proxy: Proxy) -> None:
    assert proxy.addon.vault
    store = proxy.addon.vault.store
    proxy.configure(splittoken_leeway=30)
    assert proxy.addon.vault.store is store and proxy.addon.vault.leeway == 30
