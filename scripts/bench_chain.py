"""Part of scripts/bench.py: what the addon costs a flow in mitmdump's own addon chain, in process.

    python scripts/bench_chain.py plain|addon STORE_DIR FLOWS

A flow here is mitmproxy's requestheaders, request, responseheaders and response events, each followed by its
update event as the proxy sends it, dispatched by a DumpMaster (mitmdump's addons, with -q's options) to an
API flow in reverse mode; with ``addon``, split_token.py is loaded as ``-s`` loads it and the flow carries
one of 1 000 handles, all cached. Prints the CPU time per flow in µs. No sockets, no parsing, no upstream: the
difference between the two is the addon's own work plus mitmproxy's dispatch of it, which a loaded proxy's
CPU time per request puts in proportion. One process per measurement: mitmproxy's ``ctx`` is one per process.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import jwt
from mitmproxy import hooks, options
from mitmproxy.addonmanager import traverse
from mitmproxy.http import HTTPFlow
from mitmproxy.proxy.layers import http as layers
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow, tutils
from mitmproxy.tools.dump import DumpMaster

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "addons"))

from splittoken.seal import Record, seal, store_key  # noqa: E402

HANDLES = 1000
WARM_UP = 1000  # flows before the measured ones: every handle cached, every code path warm
MODE = ProxyMode.parse("reverse:http://127.0.0.1:1@8081")
LIFE = 36000.0


async def master(with_addon: bool, store: Path) -> DumpMaster:
    opts = options.Options()
    m = DumpMaster(opts, with_termlog=False)
    opts.update(flow_detail=0, connection_strategy="lazy")
    if with_addon:
        opts.update(scripts=[str(ROOT / "addons" / "split_token.py")])
        await asyncio.sleep(0.2)  # the script loader loads it on the event loop
        opts.update(splittoken_store=str(store))
    m.addons.trigger(hooks.ConfigureHook(set(opts.keys())))
    await m.addons.trigger_event(hooks.RunningHook())
    return m


async def issued(m: DumpMaster) -> list[str]:
    # By name: the script imports the package anew (split_token.py), so its classes are not ours.
    (addon,) = (a for a in traverse(m.addons.chain) if type(a).__name__ == "SplitToken")
    assert addon.vault
    handles = []
    for i in range(HANDLES):
        token = jwt.encode({"sub": f"user-{i}", "exp": int(time.time() + LIFE)}, "k" * 32, algorithm="HS256")
        signing_input, _, handle = token.rpartition(".")
        record = Record("access", signing_input, time.time() + LIFE, subject=f"user-{i}")
        await addon.vault.add(store_key(handle), seal(handle, record), time.time() + LIFE)
        handles.append(handle)
    return handles


def api_flow(authorization: str) -> HTTPFlow:
    flow = tflow.tflow()
    flow.client_conn.proxy_mode = MODE
    flow.request.path = "/_bench"
    flow.request.headers["authorization"] = authorization
    return flow


async def cpu_per_flow(m: DumpMaster, flows: list[HTTPFlow]) -> float:
    answer = tutils.tresp(content=b'{"ok": true}')
    started = time.process_time()
    for flow in flows:
        await m.addons.handle_lifecycle(layers.HttpRequestHeadersHook(flow))
        await m.addons.handle_lifecycle(layers.HttpRequestHook(flow))
        if flow.response is None:
            flow.response = answer.copy()
        await m.addons.handle_lifecycle(layers.HttpResponseHeadersHook(flow))
        await m.addons.handle_lifecycle(layers.HttpResponseHook(flow))
    return (time.process_time() - started) / len(flows) * 1e6


async def main(kind: str, store: Path, count: int) -> None:
    m = await master(kind == "addon", store)
    handles = await issued(m) if kind == "addon" else ["x" * 43] * HANDLES
    await cpu_per_flow(m, [api_flow(f"Bearer {handles[i % HANDLES]}") for i in range(WARM_UP)])
    flows = [api_flow(f"Bearer {handles[i % HANDLES]}") for i in range(count)]
    us = await cpu_per_flow(m, flows)
    if kind == "addon" and not all(f.request.headers["authorization"].count(".") == 2 for f in flows):
        raise SystemExit("a flow was not joined")
    print(f"{us:.1f}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])))
