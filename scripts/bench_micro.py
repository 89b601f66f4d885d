"""The benchmark in process (part of scripts/bench.py): the addon's own hooks, in mitmproxy's test master,
against DiskStores of three sizes filled in bulk with real sealed records.

Per round and store: joins with the record cache off (splittoken_cache_size=0: a store read and unsealing
each, as before the cache) and bare store lookups of the same records; then, with the default options,
joins of records not yet cached (misses), joins of a working set of handles used again and again (hits: the
steady state of a proxy whose clients call it repeatedly), the same with splittoken_log_joins on, and
splits. The store is switched through the splittoken_store option, as an operator would.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

import diskcache
import requests
from mitmproxy import hooks, http
from mitmproxy.addonmanager import traverse
from mitmproxy.options import Options
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from bench_common import (
    SEED,
    TOKEN_FORM,
    BenchFailed,
    Plan,
    handle_for,
    percentile,
    random_signature,
    rotated,
)
from splittoken.addon import SplitToken
from splittoken.seal import Record, seal, store_key
from splittoken.state import META
from splittoken.store import Store
from stack import TOKEN_PATH

RECORD_TTL = 86400
# What splittoken.disk_store.DiskStore passes to diskcache.Cache (besides its busy timeout).
DISK_SETTINGS: dict[str, Any] = {
    "eviction_policy": "none", "statistics": False, "sqlite_mmap_size": 0, "sqlite_cache_size": 1024,
}  # fmt: skip
REVERSE = ProxyMode.parse("reverse:http://127.0.0.1:1")
# The kinds of join measured; "join" is the default configuration's steady state.
JOINS = ("join", "join_logged", "join_miss", "join_nocache")
LIVE_TIMEOUT = 5.0  # seconds a new vault's cache may take to hear from its change feed


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


def disk_usage(directory: Path) -> int:
    """Bytes allocated on disk, as du counts them."""
    return sum(p.stat().st_blocks * 512 for p in directory.rglob("*") if p.is_file())


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
        if (work := addon.request(flow)) is not None:
            await work
        t0 = time.perf_counter_ns()
        if (work := addon.response(flow)) is not None:
            await work
        await asyncio.sleep(0)
        times.append((time.perf_counter_ns() - t0) / 1000)
        assert flow.response is not None
        if json.loads(flow.response.content or b"{}").get("access_token") != signature:
            raise BenchFailed(f"split refused: {flow.metadata.get(META)}")
        issued.append(signature)
    for signature in issued:
        addon.vault.forget_now(signature)
    return times


async def cached_vault(addon: SplitToken, options: Options, **values: Any) -> None:
    """Reconfigure the addon (through its configure hook) and wait until its cache, if any, is live."""
    options.update(**values)
    assert addon.vault
    deadline = time.monotonic() + LIVE_TIMEOUT
    while addon.vault.cache is not None and not addon.vault.cache.live:
        if time.monotonic() > deadline:
            raise BenchFailed(f"the record cache never went live: {addon.vault!r}")
        await asyncio.sleep(0.005)


async def micro_rounds(
    plan: Plan, addon: SplitToken, options: Options, stores: dict[int, Path], template: TokenTemplate
) -> tuple[dict[str, dict[int, list[list[float]]]], Counter[str]]:
    """Per op, per size: one list of µs per round. Sizes alternate within each round, in a rotating order;
    so do the cached joins with and without the log line. Every batch gets random records of its own.
    Also what the cache answered in the cached batches: a join loop that never waits starves the cache's
    watcher thread of the GIL now and then, and the cache is not trusted until it has run (a miss)."""
    rng = random.Random(SEED)
    cache_size = options.default("splittoken_cache_size")
    times: dict[str, dict[int, list[list[float]]]] = {
        op: {n: [] for n in stores} for op in (*JOINS, "lookup", "split")
    }
    answered: Counter[str] = Counter()
    for r in range(plan.micro_rounds):
        for size in rotated(list(stores), r):
            # Random records across the whole store: a proxy serving many clients does not hit one page.
            def batch(n: int, size: int = size) -> list[str]:
                return [handle_for(rng.randrange(size)) for _ in range(n)]

            await cached_vault(addon, options, splittoken_store=str(stores[size]), splittoken_cache_size=0)
            uncached = batch(plan.joins)
            times["join_nocache"][size].append(await time_joins(addon, uncached))
            assert addon.vault
            times["lookup"][size].append(time_lookups(addon.vault.store, uncached))

            await cached_vault(addon, options, splittoken_cache_size=cache_size)
            times["join_miss"][size].append(await time_joins(addon, batch(plan.joins)))
            working_set = batch(plan.working_set)
            await time_joins(addon, working_set)  # cached now
            hits = [working_set[i % len(working_set)] for i in range(plan.joins)]
            cache = addon.vault.cache
            assert cache is not None
            before = Counter(hits=cache.hits, misses=cache.misses, untrusted=cache.untrusted)
            for log_joins in rotated((False, True), r):
                options.update(splittoken_log_joins=log_joins)  # the same vault: its cache stays
                times["join_logged" if log_joins else "join"][size].append(await time_joins(addon, hits))
            options.update(splittoken_log_joins=False)
            answered += Counter(hits=cache.hits, misses=cache.misses, untrusted=cache.untrusted) - before
            times["split"][size].append(await time_splits(addon, template, plan.splits))
    if not answered["hits"]:
        raise BenchFailed(f"the cache answered no join: {answered}")
    return times, answered


@contextlib.contextmanager
def configured_addon() -> Iterator[tuple[SplitToken, taddons.context]]:
    """The addon in mitmproxy's test master, configured with every option as mitmdump does on loading a
    script, and mitmdump's logging set-up: the root logger takes everything and its handlers filter, so the
    addon's info line on each join costs a log record there, whatever the console shows."""
    root_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    addon = SplitToken()
    try:
        with taddons.context(addon) as tctx:
            tctx.master.addons.invoke_addon_sync(addon, hooks.ConfigureHook(set(tctx.options.keys())))
            try:
                yield addon, tctx
            finally:
                # Closes the addon's store and unhooks mitmproxy's logging from the root logger.
                tctx.master.event_loop.run_until_complete(tctx.master.done())
    finally:
        logging.getLogger().setLevel(root_level)


def micro(plan: Plan, idp_url: str, work: Path, profile: Path | None) -> dict[str, Any]:
    template = TokenTemplate.fetch(idp_url)
    stores: dict[int, Path] = {}
    fill_seconds: dict[int, float] = {}
    bytes_per_record: dict[int, float] = {}
    for size in plan.sizes:
        stores[size] = work / f"store-{size}"
        fill_seconds[size] = fill_store(stores[size], size, template)
        bytes_per_record[size] = disk_usage(stores[size]) / size

    with configured_addon() as (addon, tctx):
        loop = tctx.master.event_loop
        # What a log line reaches here (for the method text): the root handlers and the addons an add_log
        # event is dispatched to.
        log_path = {
            "handlers": [type(h).__name__ for h in logging.getLogger().handlers],
            "addons": len(list(traverse(tctx.master.addons.chain))),
        }
        times, answered = loop.run_until_complete(micro_rounds(plan, addon, tctx.options, stores, template))
        if profile:
            profile.write_text(loop.run_until_complete(profile_joins(plan, addon, tctx.options, stores)))

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
        "cache_answers": dict(answered),
        "cache_hit_share": answered["hits"] / answered.total(),
    }


async def profile_joins(plan: Plan, addon: SplitToken, options: Options, stores: dict[int, Path]) -> str:
    """pyinstrument's text profile of cached joins (default options) against the largest store."""
    from pyinstrument import Profiler

    rng = random.Random(SEED)
    size = plan.sizes[-1]
    await cached_vault(addon, options, splittoken_store=str(stores[size]))
    working_set = [handle_for(rng.randrange(size)) for _ in range(plan.working_set)]
    await time_joins(addon, working_set)
    hits = [working_set[i % len(working_set)] for i in range(plan.joins * plan.micro_rounds)]
    # A short interval: a join takes a few tens of µs. The loop itself is profiled too, because the add_log
    # events a log line queues run there, after the hook has returned.
    profiler = Profiler(interval=0.0001, async_mode="disabled")
    profiler.start()
    await time_joins(addon, hits)
    profiler.stop()
    return profiler.output_text(unicode=True, color=False)
