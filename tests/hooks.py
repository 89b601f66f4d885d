"""Drive the SplitToken addon's hooks the way mitmproxy does, in a taddons context: shared by the unit tests
and the fuzz tests."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mitmproxy import http
from mitmproxy.hooks import ConfigureHook
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow

from splittoken.addon import SplitToken


class HookDriver:
    """The addon in a taddons context, with helpers that drive flows through its hooks."""

    def __init__(self, tctx: taddons.context, addon: SplitToken) -> None:
        self.tctx = tctx
        self.addon = addon

    def configure(self, **options: Any) -> None:
        self.tctx.configure(self.addon, **options)

    @property
    def records(self) -> int:
        assert self.addon.vault
        return self.addon.vault.store.stats().records

    async def request(self, flow: http.HTTPFlow) -> bool:
        """requestheaders + request; True when the flow would go upstream (no local answer)."""
        await awaited(self.addon.requestheaders(flow))
        if flow.response is None:
            await awaited(self.addon.request(flow))
        if flow.response is not None:
            # mitmproxy runs it for local answers too: must be a no-op
            await awaited(self.addon.response(flow))
            return False
        return True

    async def respond(self, flow: http.HTTPFlow, upstream: http.Response) -> http.Response:
        """The upstream answer arrives: responseheaders + response; returns what the client gets."""
        flow.response = upstream
        self.addon.responseheaders(flow)
        await awaited(self.addon.response(flow))
        assert flow.response is not None
        return flow.response

    async def exchange(self, flow: http.HTTPFlow, upstream: http.Response | None = None) -> http.Response:
        if await self.request(flow):
            assert upstream is not None, "the flow went upstream"
            return await self.respond(flow, upstream)
        assert flow.response is not None
        return flow.response


async def awaited(result: object) -> None:
    """What mitmproxy does with a hook's result: awaited when it is awaitable (the hook has work left)."""
    if inspect.isawaitable(result):
        await result


@contextlib.contextmanager
def driven_addon(tmp_path: Path) -> Iterator[HookDriver]:
    """A SplitToken configured as mitmdump would (every option), its store and confdir under tmp_path."""
    addon = SplitToken()
    with taddons.context(addon) as tctx:
        tctx.options.update(confdir=str(tmp_path))  # nothing lands in the real ~/.mitmproxy
        # taddons does not configure a new addon with every option, as the script loader does.
        tctx.master.addons.invoke_addon_sync(addon, ConfigureHook(set(tctx.options.keys())))
        tctx.configure(addon, splittoken_store=str(tmp_path / "store"))
        yield HookDriver(tctx, addon)
        addon.done()


def flow_for(
    method: str, url: str, content: bytes = b"", headers: Any = (), mode: str | None = None
) -> http.HTTPFlow:
    """A live flow as it arrives; ``mode`` is a mitmproxy mode spec such as ``reverse:http://api.example``."""
    pairs = headers.items() if isinstance(headers, dict) else headers
    fields = [(k.encode(), v.encode("latin-1")) for k, v in pairs]
    flow = tflow.tflow(req=http.Request.make(method, url, content, http.Headers(fields)))
    if mode:
        flow.client_conn.proxy_mode = ProxyMode.parse(mode)
    return flow
