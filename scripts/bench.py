#!/usr/bin/env python3
"""Benchmark of the split-token addon: what re-joining a handle on every request costs, how fast a revocation
reaches every proxy, and how the diskcache store scales. ``make bench`` runs it in full (several minutes);
``--quick`` is a smoke run with tiny sizes.

    python scripts/bench.py [--quick] [--out DIR] [--no-profile] [--connections N]

1. Through real processes (scripts/bench_load.py): wrk against plain and addon mitmdumps, -q and default
   output, diskcache, Redis, Redis Sentinel and Redis Cluster, one handle and many rotating, in alternating
   rounds; the propagation of a revocation from one proxy to another on the same store.
2. In process (scripts/bench_micro.py): split, join (cached, not cached, cache off) and bare store lookups
   against DiskStores of three sizes; the store's bytes per record.
3. The RSS of a mitmdump serving each of those stores.
4. Profiles, unless --no-profile: py-spy on the diskcache and Redis proxies under wrk (the top frames go in
   the results), pyinstrument on cached joins in process (profile-join.txt).

Writes results.md and results.json to bench/ (or --out; scripts/bench_report.py words them) and prints
results.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import bench_load
import bench_micro
from bench_common import ACCESS_TTL, FULL, QUICK, BenchFailed, Plan, rotated
from bench_report import (
    PROFILE_TOP,
    chain_figures,
    frames_table,
    macro_figures,
    micro_figures,
    propagation_figures,
    write_results,
)
from stack import ROOT, start_api, start_idp


def chain(plan: Plan, work: Path) -> dict[str, list[float]]:
    """µs of CPU per flow through mitmdump's addon chain (scripts/bench_chain.py), plain and with the addon,
    in alternating rounds."""
    runs: dict[str, list[float]] = {"plain": [], "addon": []}
    for r in range(plan.micro_rounds):
        for kind in rotated(list(runs), r):
            done = subprocess.run(
                [sys.executable, str(ROOT / "scripts" / "bench_chain.py"), kind, str(work / f"chain-{r}"),
                 str(plan.chain_flows)],
                capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                raise BenchFailed(f"bench_chain.py {kind} failed: {done.stdout}{done.stderr}")
            runs[kind].append(float(done.stdout.split()[-1]))
    return runs


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
    profiles: dict[str, list[tuple[str, float, float]]] = {}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="splittoken-bench-") as tmp, contextlib.ExitStack() as started:
        work = Path(tmp)
        idp = started.enter_context(start_idp("--access-ttl", str(ACCESS_TTL)))
        api = started.enter_context(start_api())
        assert idp.url and api.url
        stores = {"disk": str(work / "macro-store"), **bench_load.start_redis_stores(work, started.callback)}
        with phase(timings, "proxies under wrk"), bench_load.stopped_at_exit() as register:
            mac, running, handles = bench_load.macro(plan, idp.url, api.url, work, stores, register)
            propagation = bench_load.propagation(running, plan.rounds)
            if profile:
                for name in ("b", "c"):
                    raw = work / f"py-spy-{name}.txt"
                    frames = bench_load.profile_proxy(plan, running[name], handles[name], raw)
                    (out / f"profile-load-{name}.txt").write_text(frames_table(frames) + "\n")
                    profiles[name] = frames[:PROFILE_TOP]
        with phase(timings, "stores and in-process split/join/lookup"):
            mic = bench_micro.micro(plan, idp.url, work, out / "profile-join.txt" if profile else None)
        with phase(timings, "mitmdump RSS"):
            rss = bench_load.rss_probes(plan, idp.url, api.url, mic["stores"], work)
        with phase(timings, "hooks in mitmdump's addon chain"):
            mic["chain_us"] = chain(plan, work)
    timings["total"] = round(time.monotonic() - t0, 1)
    figs = [
        *macro_figures(plan, mac), *propagation_figures(propagation), *micro_figures(plan, mic, rss),
        *chain_figures(mic["chain_us"], mac),
    ]  # fmt: skip
    raw = {
        "macro": mac, "propagation_s": propagation,
        "micro": {k: v for k, v in mic.items() if k != "stores"}, "rss_kib": rss,
    }  # fmt: skip
    print(write_results(out, plan, quick, figs, raw, timings, profiles))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and short rounds: a smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench", help="where results.md/.json go")
    parser.add_argument("--no-profile", action="store_true", help="skip py-spy and pyinstrument")
    parser.add_argument("--connections", type=int, help="wrk -c instead of the plan's (for experiments)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.connections:
        plan = dataclasses.replace(plan, connections=args.connections)
    run(plan, args.quick, args.out, not args.no_profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
