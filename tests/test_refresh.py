"""refresh.py: refresh grants, rotation, grace replays and shared flights."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from typing import Any

import pytest

from hooks import HookDriver as Proxy
from oauth_flows import (
    assert_refused,
    body_of,
    is_handle,
    json_response,
    login,
    refresh_flow,
    refreshing,
    sig,
    store_down,
    token_fields,
)


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


async def test_store_failure_on_refresh_is_503_without_upstream(proxy: Proxy, monkeypatch: Any) -> None:
    fields, client = await login(proxy)
    assert proxy.addon.vault
    monkeypatch.setattr(proxy.addon.vault.store, "get", store_down)
    flow = refresh_flow(body_of(client)["refresh_token"])
    await assert_refused(proxy, flow, 503, "temporarily_unavailable")
    assert fields["refresh_token"] not in (flow.request.get_text() or "")


async def test_an_empty_refresh_token_in_a_refresh_answer_keeps_the_handle(proxy: Proxy) -> None:
    fields, handle, flow = await refreshing(proxy)
    answer = await proxy.respond(flow, json_response(token_fields(refresh_token="")))
    assert answer.status_code == 200
    again = refresh_flow(handle)
    assert await proxy.request(again)  # still a live refresh handle, not a retired one
    assert fields["refresh_token"] in (again.request.get_text() or "")
