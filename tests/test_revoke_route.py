"""revoke_route.py: RFC 7009 revocation of handles."""

from __future__ import annotations

import urllib.parse
from typing import Any

import pytest
from mitmproxy import http

from hooks import HookDriver as Proxy
from oauth_flows import (
    api_flow,
    assert_refused,
    body_of,
    json_response,
    login,
    refresh_flow,
    refreshing,
    revoke_flow,
    store_down,
    token_fields,
)


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
    assert sent == {"token": fields["refresh_token"], "token_type_hint": "refresh_token", "client_id": "demo"}
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


async def test_store_failure_on_revoke_is_503(proxy: Proxy, monkeypatch: Any) -> None:
    _, client = await login(proxy)
    assert proxy.addon.vault
    monkeypatch.setattr(proxy.addon.vault.store, "delete", store_down)
    flow = revoke_flow(body_of(client)["access_token"])
    await assert_refused(proxy, flow, 503, "temporarily_unavailable")
