"""addon.py: the shell: hook plumbing, store failures, streaming, commands (taddons/tflow)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from mitmproxy import http
from mitmproxy.test import tflow

from hooks import HookDriver as Proxy
from oauth_flows import (
    IDP,
    api_flow,
    body_of,
    login,
)
from splittoken.errors import StoreUnavailable


def store_down(*_: Any) -> Any:
    raise StoreUnavailable("store down (test)")


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
