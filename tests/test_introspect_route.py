"""introspect_route.py: RFC 7662 introspection of handles, for APIs outside the proxy."""

from __future__ import annotations

import json
import urllib.parse

import pytest
from mitmproxy import http

from hooks import HookDriver as Proxy
from oauth_flows import IDP, assert_error, body_of, json_response, login, make_jwt, revoke_flow
from splittoken.audit import Reason

INTROSPECT = f"{IDP}/token/introspect"


def introspect_flow(token: str, hint: str | None = None) -> http.HTTPFlow:
    return revoke_flow(token, hint, url=INTROSPECT)  # the same form: token, client, hint


def sent(flow: http.HTTPFlow) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(flow.request.get_text() or ""))


ACTIVE = json_response({"active": True, "sub": "alice", "scope": "openid"})


@pytest.mark.parametrize(("field", "hint"), [("access_token", "access_token"), ("refresh_token", None)])
async def test_a_handle_is_swapped_for_the_real_token(proxy: Proxy, field: str, hint: str | None) -> None:
    fields, client = await login(proxy)
    flow = introspect_flow(body_of(client)[field], hint)
    assert await proxy.request(flow)
    assert sent(flow)["token"] == fields[field]
    answer = await proxy.respond(flow, ACTIVE)
    assert json.loads(answer.content or b"") == {"active": True, "sub": "alice", "scope": "openid"}
    assert proxy.addon.events.counts["introspections"] == 1


async def test_a_token_that_is_no_handle_passes_unchanged(proxy: Proxy) -> None:
    flow = introspect_flow("opaque-token-from-the-server")
    assert await proxy.request(flow)
    assert sent(flow)["token"] == "opaque-token-from-the-server"
    answer = await proxy.respond(flow, json_response({"active": False}))
    assert json.loads(answer.content or b"") == {"active": False}


async def test_a_revoked_handle_passes_as_unknown(proxy: Proxy) -> None:
    _, client = await login(proxy)
    handle = body_of(client)["access_token"]
    revocation = revoke_flow(handle)
    assert await proxy.request(revocation)
    await proxy.respond(revocation, http.Response.make(200))
    flow = introspect_flow(handle)
    assert await proxy.request(flow)
    assert sent(flow)["token"] == handle  # the server never saw it: it answers inactive


@pytest.mark.parametrize(
    "answer",
    [
        lambda token: {"active": True, "token": token},
        lambda token: {"active": True, "note": json.dumps({"t": token})},
    ],
)
async def test_an_answer_quoting_the_refresh_token_shows_its_handle(proxy: Proxy, answer: object) -> None:
    fields, client = await login(proxy)
    handle = body_of(client)["refresh_token"]
    flow = introspect_flow(handle)
    assert await proxy.request(flow)
    client_answer = await proxy.respond(flow, json_response(answer(fields["refresh_token"])))  # type: ignore[operator]
    assert client_answer.status_code == 200
    assert fields["refresh_token"] not in (client_answer.text or "")
    assert json.loads(client_answer.content or b"") == answer(handle)  # type: ignore[operator]


def _escaped(token: str) -> str:
    # The token with its first character JSON-escaped: a client reads it, a plain replace does not find it.
    return f'{{"active": true, "token": "\\u{ord(token[0]):04x}{token[1:]}"}}'


@pytest.mark.parametrize(
    ("field", "answer"),
    [
        ("refresh_token", _escaped),
        ("access_token", _escaped),
        ("refresh_token", lambda token: json.dumps({"active": True, "other": make_jwt()})),
        ("access_token", lambda token: json.dumps({"active": True, "token": token})),  # the JWT itself
    ],
)
async def test_an_answer_holding_a_token_is_refused(proxy: Proxy, field: str, answer: object) -> None:
    fields, client = await login(proxy)
    flow = introspect_flow(body_of(client)[field])
    assert await proxy.request(flow)
    body = answer(fields[field])  # type: ignore[operator]
    upstream = http.Response.make(200, body.encode(), {"Content-Type": "application/json"})
    client_answer = await proxy.respond(flow, upstream)
    assert_error(client_answer, 502, "server_error")
    assert fields[field] not in (client_answer.text or "")
    assert proxy.addon.events.refusals[Reason.BAD_GATEWAY] == 1


async def test_a_handle_goes_only_beside_its_token_endpoint(proxy: Proxy) -> None:
    _, client = await login(proxy)
    handle = body_of(client)["access_token"]
    flow = revoke_flow(handle, url="http://idp.example/api/introspect")
    assert await proxy.request(flow)
    assert sent(flow)["token"] == handle
