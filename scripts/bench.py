#!/usr/bin/env python3
"""Benchmark of the split-token addon: what re-joining a handle on every request costs, and how the diskcache
store scales. ``make bench`` runs it in full (a few minutes); ``--quick`` is a smoke run with tiny sizes.

    python scripts/bench.py [--quick] [--out DIR] [--profile]

1. Through real processes, all on loopback: wrk (a separate process, bench/wrk.lua) keeps each proxy
   saturated with the same GET and the same Authorization header through
   (a) plain mitmdump in reverse mode, no addon, with a fixed opaque bearer value;
   (b) the same with the addon re-joining a handle on every request, diskcache store;
   (c) (b) with a Redis store;
   (d) (b) with splittoken_log_joins=false: no log line per re-joined request.
   The four proxies stay up for the whole run and are measured in alternating rounds (the order rotates
   each round); ratios are medians of per-round ratios, so a noisy neighbour hurts one round, not a config.
2. In this process, against DiskStores of three sizes (filled in bulk with real sealed records): split (the
   addon's response hook on a token response), join (its requestheaders hook on an API request) and the
   bare store lookup, again in alternating rounds; joins with the default options (one log line each) and,
   for comparison, with splittoken_log_joins=false; the store's bytes per record; and the RSS of a mitmdump
   serving each store.

Writes results.md and results.json to bench/ (or --out) and prints the table. --profile also writes
profile-join.txt: pyinstrument's profile of joins against the largest store (default options).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import platform
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

# The splittoken package, and the RedisServer helper the tests use too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "addons"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import diskcache
import requests
from mitmproxy import hooks, http
from mitmproxy.addonmanager import traverse
from mitmproxy.options import Options
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils
from mitmproxy.version import VERSION as MITMPROXY_VERSION

from redis_server import RedisServer
from splittoken.addon import SplitToken
from splittoken.seal import Record, seal, store_key
from splittoken.state import META
from splittoken.store import DiskStore, Store
from splittoken.vault import Vault
from stack import CLIENT, ROOT, TOKEN_PATH, Proxy, start_api, start_idp, start_proxy

WRK_SCRIPT = ROOT / "bench" / "wrk.lua"
QUIET_SCRIPT = ROOT / "bench" / "quiet.py"
# flow_detail=0 from the start; bench/quiet.py lowers the console to warnings once the listeners are up.
QUIET = {"flow_detail": "0"}
TOKEN_FORM = {"grant_type": "client_credentials", **CLIENT}
# The demo IdP's default 300 s would expire the handles in the middle of a full run.
ACCESS_TTL = 3600
RECORD_TTL = 86400
# What an RS256 signature (2048-bit key) looks like in base64url, hence a handle: 256 bytes, 342 characters.
SIGNATURE_BYTES = 256
SEED = 7
# What splittoken.store.DiskStore passes to diskcache.Cache (besides its busy timeout).
DISK_SETTINGS: dict[str, Any] = {
    "eviction_policy": "none", "statistics": False, "sqlite_mmap_size": 0, "sqlite_cache_size": 1024,
}  # fmt: skip


@dataclass(frozen=True)
class Plan:
    rounds: int  # macro: alternating rounds of a, b, c, d
    seconds: int  # macro: wrk duration of each run
    warmup_seconds: int  # macro: one unmeasured run per proxy first (0: none)
    # wrk -c: keeps each single-threaded proxy saturated (see "busy" in the results) with requests queued, as
    # at a high request rate. The proxy opens one upstream connection per client connection, all at once; the
    # demo servers' listen backlog of 128 takes them (with socketserver's default of 5, a SYN beyond it was
    # retried after 1 s: see max_ms in results.json). Latency at -c16 is mostly queueing: about
    # connections / throughput.
    connections: int
    sizes: tuple[int, int, int]  # records in the three DiskStores
    micro_rounds: int  # alternating rounds over the three stores
    joins: int  # join calls (and bare lookups) per store and round
    splits: int  # split calls per store and round
    rss_seconds: int  # wrk run against the RSS probe proxy
    rss_handles: int  # distinct handles that run rotates through


FULL = Plan(
    rounds=5, seconds=5, warmup_seconds=2, connections=16, sizes=(1_000, 100_000, 1_000_000),
    micro_rounds=5, joins=2_000, splits=400, rss_seconds=5, rss_handles=20_000,
)  # fmt: skip
QUICK = Plan(
    rounds=1, seconds=1, warmup_seconds=0, connections=16, sizes=(100, 300, 1_000),
    micro_rounds=1, joins=200, splits=40, rss_seconds=1, rss_handles=300,
)  # fmt: skip


@dataclass(frozen=True)
class Figure:
    id: str  # stable across sizes and --quick, for tests and for comparing runs
    label: str
    value: float
    unit: str
    target: str = ""  # "" when there is none: the figure is information
    met: bool | None = None


class BenchFailed(Exception):
    """A measurement would be meaningless (errors under load, a refused handle): stop, report nothing."""


# ---------------------------------------------------------------------------------------------------------
# Small helpers


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, as wrk reports its own."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def rotated(items: Sequence[Any], by: int) -> list[Any]:
    """Round r measures in a rotated order, so that no config is always first (or last) after a pause."""
    by %= len(items)
    return [*items[by:], *items[:by]]


def handle_for(i: int) -> str:
    """The i-th handle of a filled store: distinct, deterministic (so a store never needs a list of them),
    and the size and alphabet of a real RS256 signature."""
    digest = hashlib.shake_256(b"splittoken-bench-%d" % i).digest(SIGNATURE_BYTES)
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def random_signature() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(SIGNATURE_BYTES)).rstrip(b"=").decode()


def disk_usage(directory: Path) -> int:
    """Bytes allocated on disk, as du counts them."""
    return sum(p.stat().st_blocks * 512 for p in directory.rglob("*") if p.is_file())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def memory_kib(pid: int) -> dict[str, int]:
    wanted = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {name: int(line.split()[1]) for line in status for name in wanted if line.startswith(name + ":")}


def command_version(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "mitmproxy": MITMPROXY_VERSION,
        "wrk": command_version("wrk", "--version"),
        "redis": command_version("redis-server", "--version"),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------------------------------------------------
# 1. Through real processes


@dataclass(frozen=True)
class WrkRun:
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float  # a SYN dropped by a full listen backlog shows here as a retry after 1 s
    requests: int
    cpu_us_per_request: float  # the proxy's own CPU time per request
    cpu_busy: float  # the proxy's CPU time / wall time: near 1.0 when wrk keeps it saturated


def run_wrk(
    proxy: Proxy, seconds: int, connections: int, *, authorization: str = "", handles: Path | None = None
) -> WrkRun:
    """One wrk run against a proxy's API listener. Any socket error or non-2xx answer fails the benchmark:
    a refused handle would be answered fast and would flatter the figures."""
    env = os.environ | ({"WRK_HANDLES": str(handles)} if handles else {"WRK_AUTHORIZATION": authorization})
    pid = proxy.process.pid
    cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
    done = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
         "-s", str(WRK_SCRIPT), proxy.api_url + "/bench"],
        env=env, capture_output=True, text=True, timeout=seconds + 60, check=False,
    )  # fmt: skip
    cpu, wall = cpu_seconds(pid) - cpu_before, time.monotonic() - wall_before
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise BenchFailed(f"wrk failed (exit {done.returncode}): {done.stdout}{done.stderr}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    if any(data["errors"].values()) or not data["requests"]:
        raise BenchFailed(f"wrk against {proxy.api_url} saw errors: {data}")
    latency = data["latency_us"]
    return WrkRun(
        rps=data["requests"] / (data["duration_us"] / 1e6),
        p50_ms=latency["p50"] / 1000,
        p99_ms=latency["p99"] / 1000,
        max_ms=latency["max"] / 1000,
        requests=data["requests"],
        cpu_us_per_request=cpu / data["requests"] * 1e6,
        cpu_busy=cpu / wall,
    )


def quiet_proxy(
    idp_url: str,
    api_url: str,
    *,
    store: str | None,
    addon: bool,
    confdir: Path,
    options: dict[str, str] | None = None,
) -> Proxy:
    options = {**QUIET, "confdir": str(confdir), **(options or {})}
    return start_proxy(
        idp_url, api_url, store=store, addon=addon, options=options, extra_args=["-s", str(QUIET_SCRIPT)]
    )


def fetch_handle(proxy: Proxy) -> str:
    """A handle issued through the proxy's token route, checked to re-join on its API route."""
    answer = requests.post(proxy.idp_url + TOKEN_PATH, data=TOKEN_FORM, timeout=10)
    answer.raise_for_status()
    handle = answer.json()["access_token"]
    if "." in handle:
        raise BenchFailed("the proxy handed out a JWT, not a handle")
    check = requests.get(proxy.api_url + "/check", headers={"Authorization": f"Bearer {handle}"}, timeout=10)
    if check.status_code != 200 or "jwt_claims" not in check.json():
        raise BenchFailed(f"the handle did not re-join: {check.status_code} {check.text[:200]}")
    return handle


MACRO_CONFIGS = {
    "a": "plain mitmdump, no addon",
    "b": "addon, diskcache store",
    "c": "addon, Redis store",
    "d": "addon, diskcache store, splittoken_log_joins=false",
}
# The addon's configs, each compared with (a); (b) is the default configuration.
ADDON_CONFIGS = ("b", "c", "d")


def macro(
    plan: Plan, idp_url: str, api_url: str, work: Path, started: contextlib.ExitStack
) -> dict[str, Any]:
    redis_dir = work / "redis"
    redis_dir.mkdir()
    redis_server = RedisServer(redis_dir)
    redis_server.start()
    started.callback(redis_server.stop)
    confdir = work / "conf"
    proxies: dict[str, Proxy] = {}
    # One at a time: the first creates mitmproxy's CA in confdir, the others reuse it. (b) and (d) each have
    # a store directory of their own.
    for name, store, addon, options in (
        ("a", None, False, None),
        ("b", str(work / "macro-store-b"), True, None),
        ("c", redis_server.url, True, None),
        ("d", str(work / "macro-store-d"), True, {"splittoken_log_joins": "false"}),
    ):
        proxies[name] = quiet_proxy(idp_url, api_url, store=store, addon=addon, confdir=confdir,
                                    options=options)  # fmt: skip
        started.callback(proxies[name].stop)
    # (a) gets a value of a handle's size that no addon reads: the same header bytes on the wire.
    authorization = {"a": f"Bearer {random_signature()}"}
    for name in ADDON_CONFIGS:
        authorization[name] = f"Bearer {fetch_handle(proxies[name])}"

    if plan.warmup_seconds:
        for name, proxy in proxies.items():
            run_wrk(proxy, plan.warmup_seconds, plan.connections, authorization=authorization[name])
    runs: dict[str, list[WrkRun]] = {name: [] for name in proxies}
    for r in range(plan.rounds):
        for name in rotated(list(proxies), r):
            runs[name].append(run_wrk(proxies[name], plan.seconds, plan.connections,
                                      authorization=authorization[name]))  # fmt: skip

    def per_round(ratio: Any) -> dict[str, float]:
        return {x: median([ratio(a, other) for a, other in zip(runs["a"], runs[x], strict=True)])
                for x in ADDON_CONFIGS}  # fmt: skip

    return {
        "runs": {name: [vars(run) for run in rs] for name, rs in runs.items()},
        "rps": {name: median([run.rps for run in rs]) for name, rs in runs.items()},
        "p50_ms": {name: median([run.p50_ms for run in rs]) for name, rs in runs.items()},
        "p99_ms": {name: median([run.p99_ms for run in rs]) for name, rs in runs.items()},
        "cpu_us": {name: median([run.cpu_us_per_request for run in rs]) for name, rs in runs.items()},
        "cpu_busy": {name: median([run.cpu_busy for run in rs]) for name, rs in runs.items()},
        # x/a for x in b, c, d.
        "ratio": per_round(lambda a, x: x.rps / a.rps),
        # What the ratio would be if each proxy had a whole core to itself: a saturated single-threaded
        # proxy serves 1 / (CPU per request). Neighbours taking CPU time move it far less than throughput.
        "cpu_ratio": per_round(lambda a, x: a.cpu_us_per_request / x.cpu_us_per_request),
    }


# ---------------------------------------------------------------------------------------------------------
# 2. In process


@dataclass(frozen=True)
class TokenTemplate:
    """A real token response from the demo IdP; each split gets it with a fresh signature (the handle)."""

    body: dict[str, Any]
    signing_input: str  # header.payload of its access token
    subject: str

    @classmethod
    def fetch(cls, idp_url: str) -> TokenTemplate:
        answer = requests.post(idp_url + TOKEN_PATH, data=TOKEN_FORM, timeout=10)
        answer.raise_for_status()
        body = answer.json()
        signing_input = body["access_token"].rpartition(".")[0]
        payload = signing_input.partition(".")[2]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return cls(body, signing_input, str(claims.get("sub", "")))

    def response_with(self, signature: str) -> bytes:
        return json.dumps({**self.body, "access_token": f"{self.signing_input}.{signature}"}).encode()


def fill_store(directory: Path, count: int, template: TokenTemplate) -> float:
    """Write ``count`` records in one diskcache transaction, each sealed for real under its own handle
    (handle_for(i)), as DiskStore.put writes them. Returns the seconds it took."""
    t0 = time.perf_counter()
    # The settings DiskStore opens its directory with (diskcache keeps them there; DiskStore sets them again).
    cache = diskcache.Cache(str(directory), **DISK_SETTINGS)
    try:
        expires_at = time.time() + RECORD_TTL
        with cache.transact():
            for i in range(count):
                handle = handle_for(i)
                record = Record("access", template.signing_input, expires_at, template.subject)
                cache.set(store_key(handle), seal(handle, record), expire=RECORD_TTL)
    finally:
        cache.close()  # the last connection checkpoints the WAL into cache.db: du then counts the data once
    return time.perf_counter() - t0


REVERSE = ProxyMode.parse("reverse:http://127.0.0.1:1")


def api_flow() -> http.HTTPFlow:
    flow = tflow.tflow()
    flow.client_conn.proxy_mode = REVERSE  # the addon's default API route: any reverse-mode request
    return flow


def token_flow(template: TokenTemplate, signature: str) -> http.HTTPFlow:
    request = tutils.treq(
        method=b"POST", path=TOKEN_PATH.encode(), content=b"grant_type=client_credentials",
        headers=http.Headers(content_type="application/x-www-form-urlencoded"),
    )  # fmt: skip
    response = tutils.tresp(
        content=template.response_with(signature), headers=http.Headers(content_type="application/json")
    )
    flow = tflow.tflow(req=request, resp=response)
    flow.client_conn.proxy_mode = REVERSE
    return flow


async def time_joins(addon: SplitToken, handles: Sequence[str]) -> list[float]:
    """µs per join through requestheaders, the hook mitmdump runs on each API request, plus the event-loop
    work the hook queues (mitmproxy turns each log record into an add_log event), as mitmdump runs it."""
    flow = api_flow()
    times = []
    for handle in handles:
        flow.request.headers["authorization"] = f"Bearer {handle}"
        t0 = time.perf_counter_ns()
        pending = addon.requestheaders(flow)
        if pending is not None:
            await pending
        await asyncio.sleep(0)
        times.append((time.perf_counter_ns() - t0) / 1000)
        if flow.response is not None or not flow.request.headers["authorization"].endswith("." + handle):
            raise BenchFailed(f"join refused: {flow.metadata.get(META)}")
    return times


def time_lookups(store: Store, handles: Sequence[str]) -> list[float]:
    """µs per bare store lookup (no unsealing), for the scaling target."""
    keys = [store_key(handle) for handle in handles]
    times = []
    for key in keys:
        t0 = time.perf_counter_ns()
        found = store.get(key)
        times.append((time.perf_counter_ns() - t0) / 1000)
        if found is None:
            raise BenchFailed("a filled record is missing")
    return times


async def time_splits(addon: SplitToken, template: TokenTemplate, count: int) -> list[float]:
    """µs per split of a token response through the response hook (and the event-loop work it queues); the
    new records are forgotten after, so that every round sees the store at its nominal size."""
    assert addon.vault
    times, issued = [], []
    for _ in range(count):
        signature = random_signature()
        flow = token_flow(template, signature)
        if addon.requestheaders(flow) is not None:  # routes the flow: token route, nothing to await
            raise BenchFailed("the token response was not routed as one")
        await addon.request(flow)
        t0 = time.perf_counter_ns()
        await addon.response(flow)
        await asyncio.sleep(0)
        times.append((time.perf_counter_ns() - t0) / 1000)
        assert flow.response is not None
        if json.loads(flow.response.content or b"{}").get("access_token") != signature:
            raise BenchFailed(f"split refused: {flow.metadata.get(META)}")
        issued.append(signature)
    for signature in issued:
        addon.vault.forget_now(signature)
    return times


async def micro_rounds(
    plan: Plan, addon: SplitToken, options: Options, vaults: dict[int, Vault], template: TokenTemplate
) -> dict[str, dict[int, list[list[float]]]]:
    """Per op, per size: one list of µs per round. Sizes alternate within each round, in a rotating order.
    "join" runs with the default options (a log line per join), "join_nolog" with splittoken_log_joins off;
    the two alternate which goes first, and each gets its own random records."""
    rng = random.Random(SEED)
    times: dict[str, dict[int, list[list[float]]]] = {
        op: {n: [] for n in vaults} for op in ("join", "join_nolog", "lookup", "split")
    }
    for r in range(plan.micro_rounds):
        for size in rotated(list(vaults), r):
            # Random records across the whole store: a proxy serving many clients does not hit one page.
            handles = [handle_for(rng.randrange(size)) for _ in range(plan.joins)]
            nolog_handles = [handle_for(rng.randrange(size)) for _ in range(plan.joins)]
            use_vault(addon, vaults[size])
            for log_joins in rotated((True, False), r):
                options.update(splittoken_log_joins=log_joins)  # through the addon's configure hook
                op, batch = ("join", handles) if log_joins else ("join_nolog", nolog_handles)
                times[op][size].append(await time_joins(addon, batch))
            options.update(splittoken_log_joins=True)
            if not (addon.settings and addon.settings.log_joins):
                raise BenchFailed("splittoken_log_joins did not go back to its default")
            times["lookup"][size].append(time_lookups(vaults[size].store, handles))
            times["split"][size].append(await time_splits(addon, template, plan.splits))
    return times


def micro(plan: Plan, idp_url: str, work: Path, profile: Path | None) -> dict[str, Any]:
    template = TokenTemplate.fetch(idp_url)
    stores: dict[int, Path] = {}
    fill_seconds: dict[int, float] = {}
    bytes_per_record: dict[int, float] = {}
    for size in plan.sizes:
        stores[size] = work / f"store-{size}"
        fill_seconds[size] = fill_store(stores[size], size, template)
        bytes_per_record[size] = disk_usage(stores[size]) / size

    # mitmdump's logging set-up: the root logger takes everything and its handlers filter, so the addon's
    # info line on each join costs a log record there, whatever the console shows.
    root_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    addon = SplitToken()
    with taddons.context(addon) as tctx:
        loop = tctx.master.event_loop
        tctx.options.update(splittoken_store=str(stores[plan.sizes[0]]))
        # As mitmdump does on loading a script: configure with every option, so each default takes effect.
        tctx.master.addons.invoke_addon_sync(addon, hooks.ConfigureHook(set(tctx.options.keys())))
        # One open store per size, swapped in per batch: each keeps its SQLite page cache warm, as the
        # store of a long-running proxy is.
        own_vault = addon.vault
        assert own_vault
        # What a log line reaches here (for the method text): the root handlers and the addons an add_log
        # event is dispatched to.
        log_path = {
            "handlers": [type(h).__name__ for h in logging.getLogger().handlers],
            "addons": len(list(traverse(tctx.master.addons.chain))),
        }
        vaults = {size: Vault(DiskStore(path), clock=time.time) for size, path in stores.items()}
        try:
            times = loop.run_until_complete(micro_rounds(plan, addon, tctx.options, vaults, template))
            if profile:
                profile.write_text(profile_joins(loop, plan, addon, vaults[plan.sizes[-1]]))
        finally:
            for vault in vaults.values():
                vault.close()
            use_vault(addon, own_vault)
            # Closes the addon's own store and unhooks mitmproxy's logging from the root logger.
            loop.run_until_complete(tctx.master.done())
            logging.getLogger().setLevel(root_level)

    small, large = plan.sizes[0], plan.sizes[-1]

    def per_round_ratio(op: str, stat: Any = median) -> float:
        rounds = zip(times[op][small], times[op][large], strict=True)
        return median([stat(big) / stat(few) for few, big in rounds])

    def p99(values: Sequence[float]) -> float:
        return percentile(values, 99)

    def pooled(op: str, size: int) -> list[float]:
        return [t for round_times in times[op][size] for t in round_times]

    return {
        "stores": stores,
        "fill_seconds": fill_seconds,
        "fill_rate": sum(plan.sizes) / sum(fill_seconds.values()),
        "bytes_per_record": bytes_per_record,
        "median_us": {op: {n: median(pooled(op, n)) for n in plan.sizes} for op in times},
        "p99_us": {op: {n: percentile(pooled(op, n), 99) for n in plan.sizes} for op in times},
        "ratio_large_small": {op: per_round_ratio(op) for op in times},
        "p99_ratio_large_small": {op: per_round_ratio(op, p99) for op in times},
        "log_path": log_path,
    }


def use_vault(addon: SplitToken, vault: Vault) -> None:
    """Point the addon's routes at one of the per-size vaults, as if its store option had changed."""
    assert addon.settings
    addon.vault = vault
    addon._build_routes(addon.settings, vault)


def profile_joins(loop: asyncio.AbstractEventLoop, plan: Plan, addon: SplitToken, vault: Vault) -> str:
    """pyinstrument's text profile of one more batch of joins, against the largest store."""
    from pyinstrument import Profiler

    rng = random.Random(SEED)
    size = plan.sizes[-1]
    handles = [handle_for(rng.randrange(size)) for _ in range(plan.joins * plan.micro_rounds)]
    use_vault(addon, vault)
    # A short interval: a join takes tens of µs. The loop itself is profiled too, because the add_log events
    # a log line queues run there, after the hook has returned.
    profiler = Profiler(interval=0.0001)
    profiler.start()
    loop.run_until_complete(time_joins(addon, handles))
    profiler.stop()
    return profiler.output_text(unicode=True, color=False)


def rss_probe(plan: Plan, idp_url: str, api_url: str, store: Path, size: int, work: Path) -> dict[str, int]:
    """mitmdump's memory after serving joins of random records of a store: a store read from disk on demand
    keeps it flat; a store loaded into memory would grow it with the records."""
    rng = random.Random(SEED)
    handles = work / f"handles-{size}.txt"
    handles.write_text("".join(handle_for(rng.randrange(size)) + "\n" for _ in range(plan.rss_handles)))
    proxy = quiet_proxy(idp_url, api_url, store=str(store), addon=True, confdir=work / "conf")
    try:
        run_wrk(proxy, plan.rss_seconds, plan.connections, handles=handles)
        return memory_kib(proxy.process.pid)
    finally:
        proxy.stop()


# ---------------------------------------------------------------------------------------------------------
# Results


def count(n: int) -> str:
    return f"{n:,}".replace(",", " ")


def figures(
    plan: Plan, mac: dict[str, Any], mic: dict[str, Any], rss: dict[int, dict[str, int]]
) -> list[Figure]:
    small, _, large = plan.sizes
    tiers = tuple(zip(plan.sizes, ("small", "mid", "large"), strict=True))
    out: list[Figure] = []
    for name, what in MACRO_CONFIGS.items():
        out += [
            Figure(f"rps_{name}", f"({name}) {what}: throughput", mac["rps"][name], "req/s"),
            Figure(f"p50_{name}", f"({name}) latency p50", mac["p50_ms"][name], "ms"),
            Figure(f"p99_{name}", f"({name}) latency p99", mac["p99_ms"][name], "ms"),
            Figure(f"cpu_{name}", f"({name}) proxy CPU per request", mac["cpu_us"][name], "µs"),
            Figure(f"busy_{name}", f"({name}) proxy CPU time / wall time (1: saturated)",
                   mac["cpu_busy"][name], "×"),
        ]  # fmt: skip
    ratio, cpu_ratio = mac["ratio"], mac["cpu_ratio"]
    # The target is judged on (b), the default configuration, and on (d), the same with the log line off.
    out += [
        Figure("ratio_b_a", "throughput b/a (median of per-round ratios)", ratio["b"], "×",
               "≥ 0.95", ratio["b"] >= 0.95),
        Figure("ratio_c_a", "throughput c/a (median of per-round ratios)", ratio["c"], "×"),
        Figure("ratio_d_a", "throughput d/a (log_joins off)", ratio["d"], "×", "≥ 0.95", ratio["d"] >= 0.95),
    ]  # fmt: skip
    out += [
        Figure(f"cpu_ratio_{x}_a", f"{x}/a from proxy CPU per request (a's CPU / {x}'s)", cpu_ratio[x], "×")
        for x in ADDON_CONFIGS
    ]
    for op, what in (("split", "split (response hook)"), ("join", "join (requestheaders hook)"),
                     ("lookup", "store lookup (DiskStore.get)")):  # fmt: skip
        for size, tier in tiers:
            median_us = mic["median_us"][op][size]
            target, met = ("≤ 50", median_us <= 50) if (op, tier) == ("join", "large") else ("", None)
            out.append(Figure(f"{op}_median_{tier}", f"{what} median, {count(size)} records", median_us, "µs",
                              target, met))  # fmt: skip
            out.append(Figure(f"{op}_p99_{tier}", f"{what} p99, {count(size)} records",
                              mic["p99_us"][op][size], "µs"))  # fmt: skip
        if op == "join":
            out += [
                Figure("join_median_large_nolog", f"join median, {count(large)} records, log_joins off",
                       mic["median_us"]["join_nolog"][large], "µs"),
                Figure("join_p99_large_nolog", f"join p99, {count(large)} records, log_joins off",
                       mic["p99_us"]["join_nolog"][large], "µs"),
            ]  # fmt: skip
    lookup_ratio = mic["ratio_large_small"]["lookup"]
    out += [
        Figure("lookup_ratio", f"store lookup median, {count(large)} / {count(small)} records",
               lookup_ratio, "×", "≤ 1.5", lookup_ratio <= 1.5),
        Figure("lookup_p99_ratio", f"store lookup p99, {count(large)} / {count(small)} records (context)",
               mic["p99_ratio_large_small"]["lookup"], "×"),
        Figure("join_ratio", f"join median, {count(large)} / {count(small)} records",
               mic["ratio_large_small"]["join"], "×"),
    ]  # fmt: skip
    for size, tier in tiers:
        out.append(Figure(f"bytes_per_record_{tier}", f"store bytes per record (du), {count(size)} records",
                          mic["bytes_per_record"][size], "B"))  # fmt: skip
    out.append(Figure("fill_rate", "bulk fill, sealed records", mic["fill_rate"], "records/s"))
    for size, tier in tiers:
        out.append(Figure(f"rss_{tier}", f"mitmdump VmRSS serving {count(size)} records",
                          rss[size]["VmRSS"] / 1024, "MiB"))  # fmt: skip
    rss_ratio = rss[large]["VmRSS"] / rss[small]["VmRSS"]
    out.append(Figure("rss_ratio", f"VmRSS {count(large)} / {count(small)} records (flat)", rss_ratio, "×",
                      "≤ 1.10", rss_ratio <= 1.10))  # fmt: skip
    return out


def render(value: float) -> str:
    if value >= 1000:
        return count(round(value))
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def table(figs: Sequence[Figure]) -> str:
    rows = ["| figure | value | target | met? |", "| --- | ---: | --- | --- |"]
    for f in figs:
        met = "" if f.met is None else ("met" if f.met else "**NOT MET**")
        rows.append(f"| {f.label} | {render(f.value)} {f.unit} | {f.target} | {met} |")
    return "\n".join(rows)


def write_results(
    out: Path, plan: Plan, quick: bool, figs: Sequence[Figure], raw: dict[str, Any], timings: dict[str, float]
) -> str:
    info = machine()
    document = {
        "quick": quick, "machine": info, "plan": vars(plan), "timings_s": timings,
        "figures": [vars(f) for f in figs], "raw": raw,
    }  # fmt: skip
    log_path = raw["micro"]["log_path"]
    (out / "results.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    described = ", ".join(f"{key}: {value}" for key, value in info.items())
    text = table(figs)
    timed = ", ".join(f"{name} {seconds} s" for name, seconds in timings.items())
    (out / "results.md").write_text(
        f"# splittoken benchmark{' (--quick: tiny sizes, not a measurement)' if quick else ''}\n\n"
        f"Machine: {described}.\n\n"
        f"Run: `make bench` (`scripts/bench.py`). Timings: {timed}.\n\n"
        f"- Proxies: wrk -t1 -c{plan.connections} (a separate process, bench/wrk.lua), GET through each "
        "proxy's API listener to the echo API; (a) sends a random bearer value of a handle's size, (b), (c) "
        "and (d) one handle issued through their token listener; (b) and (d) each have a diskcache store of "
        "their own, (d) runs with `--set splittoken_log_joins=false`. All four stay up; "
        f"{plan.rounds} alternating rounds of {plan.seconds} s each, medians over rounds; ratios are medians "
        'of per-round ratios. "From proxy CPU per request" is the same ratio computed from each '
        "mitmdump's own CPU time (/proc), which neighbours on a shared machine disturb far less. "
        "The ≥ 0.95 target is judged on (b), the default options, and separately on (d). With "
        f"{plan.connections} connections the proxies stay saturated with requests queued, so p50/p99 are "
        "mostly queueing (about connections / throughput); results.json has each run's max latency.\n"
        f"- In process: {plan.micro_rounds} alternating rounds over the three stores of {plan.joins} joins "
        f"and lookups, each on a random record, and {plan.splits} splits; medians and p99 over all calls. "
        "Join = the addon's requestheaders hook on an API flow plus the event-loop work it queues, with the "
        "default options (one INFO log line per join); the log_joins off rows are a second batch of joins "
        "with the option off, alternating with the first. The harness is mitmproxy's test master "
        f"(taddons), not mitmdump: it includes the log line's stdlib logging, the root handlers it has "
        f"({', '.join(log_path['handlers'])}: formatting, a call_soon_threadsafe) and the add_log event "
        f"that handler queues, but that event reaches the {log_path['addons']} addons of the test master "
        "only, not the ~40 of a mitmdump with the addon, and mitmdump's TermLog and ErrorCheck handlers "
        "are absent. So the in-process join counts part of mitmproxy's log dispatch; (b) − (d) in proxy "
        "CPU per request counts all of it. Split = its response hook on a token response of the demo IdP; "
        "warm OS page cache. Ratios between sizes are medians of per-round ratios.\n"
        "- Stores: filled with diskcache in one transaction per store; every record is sealed (seal.seal) "
        "under its own distinct handle, none reuses a template. Bytes per record: du of the directory "
        "(WAL checkpointed) / records.\n"
        f"- RSS: VmRSS of a mitmdump with the addon on each store after {plan.rss_seconds} s of wrk "
        f"rotating through {plan.rss_handles} random handles of it.\n\n"
        f"{text}\n"
    )
    return text


# ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def phase(timings: dict[str, float], name: str) -> Iterator[None]:
    print(f"bench: {name}…", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    yield
    timings[name] = round(time.monotonic() - t0, 1)
    print(f"bench: {name} took {timings[name]} s", file=sys.stderr, flush=True)


def run(plan: Plan, quick: bool, out: Path, profile: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="splittoken-bench-") as tmp, contextlib.ExitStack() as started:
        work = Path(tmp)
        idp = started.enter_context(start_idp("--access-ttl", str(ACCESS_TTL)))
        api = started.enter_context(start_api())
        assert idp.url and api.url
        with phase(timings, "proxies a/b/c/d under wrk"), contextlib.ExitStack() as proxies:
            mac = macro(plan, idp.url, api.url, work, proxies)
        with phase(timings, "stores and in-process split/join/lookup"):
            mic = micro(plan, idp.url, work, out / "profile-join.txt" if profile else None)
        with phase(timings, "mitmdump RSS"):
            rss = {
                size: rss_probe(plan, idp.url, api.url, mic["stores"][size], size, work)
                for size in plan.sizes
            }
    timings["total"] = round(time.monotonic() - t0, 1)
    figs = figures(plan, mac, mic, rss)
    raw = {"macro": mac, "micro": {k: v for k, v in mic.items() if k != "stores"}, "rss_kib": rss}
    print(write_results(out, plan, quick, figs, raw, timings))
    print("timings (s): " + ", ".join(f"{name} {seconds}" for name, seconds in timings.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and short rounds: a smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench", help="where results.md/.json go")
    parser.add_argument("--profile", action="store_true", help="also profile joins (pyinstrument)")
    parser.add_argument("--connections", type=int, help="wrk -c instead of the plan's (for experiments)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.connections:
        plan = dataclasses.replace(plan, connections=args.connections)
    run(plan, args.quick, args.out, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
