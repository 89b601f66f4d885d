"""OAuth flows for the route tests: tokens, token endpoint answers, requests, and assertions about what a
client receives. Shared by the tests of every route module."""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from mitmproxy import http

from hooks import HookDriver as Proxy
from hooks import flow_for
from splittoken import jws
from splittoken.errors import StoreUnavailable

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
    body: bytes = b"grant_type=password&username=alice&password=pw&client_id=demo",
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
    fields = {"token": token, "client_id": "demo", **({"token_type_hint": hint} if hint else {})}
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


async def login(
    proxy: Proxy, fields: dict[str, Any] | None = None, **kw: Any
) -> tuple[dict[str, Any], http.Response]:
    """A password grant whose answer is ``fields``; returns what the IdP sent and what the client got."""
    fields = fields if fields is not None else token_fields()
    return fields, await proxy.exchange(token_flow(), json_response(fields, **kw))


async def joined(proxy: Proxy) -> tuple[str, str, http.HTTPFlow]:
    """The JWT, its handle, and a flow whose handle was re-joined, on its way to the API."""
    fields, client = await login(proxy)
    handle = body_of(client)["access_token"]
    flow = api_flow(f"Bearer {handle}")
    assert await proxy.request(flow)
    assert flow.request.headers["authorization"] == f"Bearer {fields['access_token']}"
    return fields["access_token"], handle, flow


def store_down(*_: Any) -> Any:
    raise StoreUnavailable("store down (test)")
