"""addon.py: the shell: hook plumbing, store failures, streaming, commands (taddons/tflow)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from mitmproxy import http
from mitmproxy.flow import Error
from mitmproxy.test import tflow

from hooks import HookDriver as Proxy
from oauth_flows import (
    api_flow,
    assert_error,
    body_of,
    json_response,
    login,
    make_jwt,
    refresh_flow,
    token_fields,
    token_flow,
)
from splittoken.errors import StoreUnavailable
from splittoken.state import FlowState


def store_down(*_: Any) -> Any:
    raise StoreUnavailable("store down (test)")


async def test_cycle_through_all_hooks(proxy: Proxy) -> None:
    fields, client = await login(proxy)
    flow = api_flow(f"Bearer {body_of(client)['access_token']}")
    flow.response = http.Response.make(200, b"ok")
    await proxy.tctx.cycle(proxy.addon, flow)
    assert flow.request.headers["Authorization"] == f"Bearer {fields['access_token']}"
    flow = token_flow()
    flow.error = tflow.terr()  # the authorization server cannot be reached
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
    monkeypatch.setattr(proxy.addon.vault.store, "stats", store_down)
    assert "store unavailable" in proxy.tctx.master.commands.call("splittoken.stats")


# ---------------------------------------------------------------------------------------------------------
# CORS on the proxy's own answers (issue 10, property 10)

PAGE = "http://localhost:5173"


def from_page(flow: http.HTTPFlow, origin: str = PAGE) -> http.HTTPFlow:
    flow.request.headers["Origin"] = origin
    return flow


async def test_token_route_refusals_carry_the_cors_headers_the_authorization_server_grants(
    proxy: Proxy,
) -> None:
    """A public client's refresh is a simple request (no preflight): what the page may read is learnt from
    the authorization server's earlier answers to it."""
    cors = {"Access-Control-Allow-Origin": PAGE, "Access-Control-Allow-Credentials": "true"}
    # A login from the page, answered with the grant: learnt from every answer, whatever its route.
    client = await proxy.exchange(from_page(token_flow()), json_response(token_fields(), headers=cors))
    assert client.headers["Access-Control-Allow-Origin"] == PAGE  # the authorization server's own
    flow = from_page(refresh_flow("B" * 43))
    answer = await proxy.exchange(flow)
    assert_error(answer, 400, "invalid_grant")
    assert answer.headers["Access-Control-Allow-Origin"] == PAGE
    assert answer.headers["Access-Control-Allow-Credentials"] == "true"
    assert answer.headers["Vary"] == "Origin"


async def test_answers_the_proxy_replays_carry_only_this_origins_grant(proxy: Proxy) -> None:
    """A shared refresh answer is a copy of another client's: that client's CORS headers do not carry over."""
    flow = from_page(refresh_flow("B" * 43), "http://localhost:9999")
    st = FlowState("token")
    cors = {"Access-Control-Allow-Origin": PAGE, "Access-Control-Allow-Credentials": "true"}
    copied = json_response({"ok": True}, headers=cors)
    proxy.addon.answers.answer(flow, st, copied, "shared a concurrent refresh", refused=False)
    assert flow.response is copied
    assert "Access-Control-Allow-Origin" not in copied.headers
    assert "Access-Control-Allow-Credentials" not in copied.headers


async def test_a_misconfigured_proxys_503_can_be_read_by_pages_allowed_before(proxy: Proxy) -> None:
    proxy.configure(splittoken_cors_origins=[PAGE])
    proxy.addon.misconfigured = "splittoken_max_ttl: must be a whole number, not 'abc'"
    flow = from_page(api_flow("Bearer " + "A" * 43))
    assert not await proxy.request(flow)
    assert_error(flow.response, 503, "temporarily_unavailable")
    assert flow.response.headers["Access-Control-Allow-Origin"] == PAGE


# -----------------------------------------------------------------------------------------------------------
# What mitmproxy would say itself about an upstream answer


async def test_a_reason_phrase_is_the_standard_one(proxy: Proxy) -> None:
    """``HTTP/1.1 200 <the JWT>``: no check reads the reason phrase, so none passes; without the rewrite the
    JWT reaches the client in it."""
    leaked = make_jwt(sub="bob")
    upstream = json_response(token_fields())
    upstream.reason = leaked
    answer = await proxy.exchange(token_flow(), upstream)
    assert answer.status_code == 200
    assert answer.reason == "OK"


async def test_an_unreadable_upstream_answer_is_closed_not_quoted(proxy: Proxy) -> None:
    """mitmproxy answers an upstream answer it cannot parse with a 502 page quoting it (an invalid header
    line holding the JWT): the flow is killed instead. An error that quotes nothing keeps its 502."""
    for quoting in ("Invalid header line: b'X-Debug abc'", "illegal chunk header: bytearray(b'rt-1')"):
        flow = token_flow()
        assert await proxy.request(flow)
        flow.error = Error(quoting)
        proxy.addon.error(flow)
        assert flow.error.msg == Error.KILLED_MESSAGE
    for plain in ("connection refused", "Server disconnected.", "HTTP/1 protocol error: peer closed"):
        flow = token_flow()
        assert await proxy.request(flow)
        flow.error = Error(plain)
        proxy.addon.error(flow)
        assert flow.error.msg == plain
