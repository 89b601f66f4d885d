"""The benchmark through real processes (part of scripts/bench.py), all on loopback: wrk (a separate process,
bench/wrk.lua) keeps each mitmdump saturated with GETs through its API listener to the echo API.

Ten proxies, started with the same flags apart from what is compared, and all up for the whole run:

    (a) plain mitmdump, no addon    (b) addon, diskcache    (c) addon, Redis    (d) (b) with log_joins on
    (h) addon, Redis Sentinel       (i) addon, Redis Cluster       (j) (b) with metrics and the audit trail on
    all with -q (bench/quiet.py: mitmdump's -q once the listeners are up);
    (e) plain mitmdump, (f) addon, diskcache, (g) addon, Redis, with mitmdump's default output.

Each is measured with one handle (one header, built once by wrk) and with many distinct handles rotating;
(a) and (e) get random bearer values of a handle's size instead, the same bytes on the wire. Rounds alternate
over every proxy and mode (the order rotates each round); ratios are medians of per-round ratios against the
plain proxy with the same output, so a noisy neighbour hurts one round, not a config.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

import requests

from bench_common import SEED, TOKEN_FORM, BenchFailed, Plan, handle_for, random_signature, rotated
from redis_server import RedisServer
from redis_topologies import ClusterTopology, SentinelTopology
from stack import CLIENT, REVOKE_PATH, ROOT, TOKEN_PATH, Proxy, start_proxy

WRK_SCRIPT = ROOT / "bench" / "wrk.lua"
QUIET_SCRIPT = ROOT / "bench" / "quiet.py"
MODES = ("one", "many")
PROFILE_FRAMES = 100  # frames kept from a py-spy profile


@dataclass(frozen=True)
class Config:
    name: str
    what: str
    store: str  # "": no addon; else the addon on that store: "disk", "redis", "sentinel" or "cluster"
    quiet: bool  # -q, or mitmdump's default output
    options: dict[str, str] = field(default_factory=dict)

    def baseline(self) -> str:
        """The plain proxy this one is compared with: the same output."""
        return "a" if self.quiet else "e"


CONFIGS = (
    Config("a", "plain mitmdump, no addon, -q", "", True),
    Config("b", "addon, diskcache store, -q", "disk", True),
    Config("c", "addon, Redis store, -q", "redis", True),
    Config("d", "addon, diskcache store, -q, splittoken_log_joins=true", "disk", True,
           {"splittoken_log_joins": "true"}),
    Config("e", "plain mitmdump, no addon, default output", "", False),
    Config("f", "addon, diskcache store, default output", "disk", False),
    Config("g", "addon, Redis store, default output", "redis", False),
    Config("h", "addon, Redis Sentinel store, -q", "sentinel", True),
    Config("i", "addon, Redis Cluster store, -q", "cluster", True),
    Config("j", "addon, diskcache store, -q, metrics and audit trail on", "disk", True,
           {"splittoken_metrics": "127.0.0.1:0", "splittoken_audit_log": "{work}/audit-j.log"}),
)  # fmt: skip
ADDON_CONFIGS = tuple(c for c in CONFIGS if c.store)
# Propagation: per store, the proxy that revokes and the one that had the handle cached. Sentinel and Cluster
# have one proxy each under wrk: a second one revokes.
PROPAGATION_PAIRS = {"disk": ("b", "f"), "redis": ("c", "g"), "sentinel": ("h2", "h"), "cluster": ("i2", "i")}
REVOKERS = (
    Config("h2", "addon, Redis Sentinel store, -q (revokes, for the propagation)", "sentinel", True),
    Config("i2", "addon, Redis Cluster store, -q (revokes, for the propagation)", "cluster", True),
)


@dataclass(frozen=True)
class WrkRun:
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float  # a SYN dropped by a full listen backlog shows here as a retry after 1 s
    requests: int
    cpu_us_per_request: float  # the proxy's own CPU time per request
    cpu_busy: float  # the proxy's CPU time / wall time: near 1.0 when wrk keeps it saturated


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def memory_kib(pid: int) -> dict[str, int]:
    wanted = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {name: int(line.split()[1]) for line in status for name in wanted if line.startswith(name + ":")}


def run_wrk(proxy: Proxy, seconds: int, connections: int, authorization: str | Path) -> WrkRun:
    """One wrk run against a proxy's API listener: one Authorization value, or a file of handles to rotate
    through. Any socket error or non-2xx answer fails the benchmark: a refused handle would be answered
    fast and would flatter the figures."""
    if isinstance(authorization, Path):
        env = os.environ | {"WRK_HANDLES": str(authorization)}
    else:
        env = os.environ | {"WRK_AUTHORIZATION": authorization}
    pid = proxy.process.pid
    cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
    done = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
         "-s", str(WRK_SCRIPT), proxy.api_url + "/_bench"],
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


def bench_proxy(
    idp_url: str, api_url: str, *, store: str | None, confdir: Path, quiet: bool = True,
    options: dict[str, str] | None = None,
) -> Proxy:  # fmt: skip
    """A mitmdump for the benchmark: the addon when ``store`` is given, -q (as bench/quiet.py) or not."""
    options = {"confdir": str(confdir), **(options or {})}
    extra: list[str] = []
    if quiet:
        # flow_detail=0 from the start; bench/quiet.py does the rest of -q once the listeners are up.
        options["flow_detail"] = "0"
        extra = ["-s", str(QUIET_SCRIPT)]
    return start_proxy(
        idp_url, api_url, store=store, addon=store is not None, options=options, extra_args=extra
    )


def issue_handles(proxy: Proxy, count: int) -> list[str]:
    """Handles issued through the proxy's token route; the first is checked to re-join on its API route."""

    def one(_: int) -> str:
        answer = requests.post(proxy.idp_url + TOKEN_PATH, data=TOKEN_FORM, timeout=10)
        answer.raise_for_status()
        handle = answer.json()["access_token"]
        if "." in handle:
            raise BenchFailed("the proxy handed out a JWT, not a handle")
        return handle

    with ThreadPoolExecutor(4) as pool:
        handles = list(pool.map(one, range(count)))
    check_joins(proxy, handles[0])
    return handles


def check_joins(proxy: Proxy, handle: str) -> None:
    check = requests.get(proxy.api_url + "/check", headers={"Authorization": f"Bearer {handle}"}, timeout=10)
    if check.status_code != 200:
        raise BenchFailed(f"the handle did not re-join: {check.status_code} {check.text[:200]}")
    # The proxy redacts the JWT in what the echo API shows, but its claims were decoded upstream.
    if "jwt_claims" not in check.json():
        raise BenchFailed("the echo API received no JWT")


def stop_all(proxies: Iterable[Proxy]) -> None:
    """Side by side: a mitmdump takes about a second to shut down."""
    stopping = list(proxies)
    with ThreadPoolExecutor(len(stopping) or 1) as pool:
        list(pool.map(Proxy.stop, stopping))


@contextlib.contextmanager
def stopped_at_exit() -> Iterator[Callable[[Proxy], None]]:
    """A register for proxies (start_proxies' ``register``), all of them stopped on leaving."""
    proxies: list[Proxy] = []
    try:
        yield proxies.append
    finally:
        stop_all(proxies)


def start_proxies(
    idp_url: str, api_url: str, work: Path, stores: dict[str, str], register: Callable[[Proxy], None]
) -> dict[str, Proxy]:
    """Every config's mitmdump, on ``stores[config.store]`` (a splittoken_store value). The first alone, as it
    creates mitmproxy's CA in confdir; then the others side by side. The proxies of one store share it, as
    proxies of one deployment do: handles issued once serve them all."""
    confdir = work / "conf"

    def start(config: Config) -> Proxy:
        proxy = bench_proxy(
            idp_url, api_url, store=stores.get(config.store), confdir=confdir, quiet=config.quiet,
            options={name: value.format(work=work) for name, value in config.options.items()},
        )  # fmt: skip
        register(proxy)
        return proxy

    first, *others = CONFIGS
    proxies = {first.name: start(first)}
    others += REVOKERS
    with ThreadPoolExecutor(len(others)) as pool:
        proxies |= dict(zip((c.name for c in others), pool.map(start, others), strict=True))
    return proxies


def macro(
    plan: Plan, idp_url: str, api_url: str, work: Path, stores: dict[str, str],
    register: Callable[[Proxy], None],
) -> tuple[dict[str, Any], dict[str, Proxy], dict[str, Path]]:  # fmt: skip
    """The alternating rounds, with ``stores`` as for start_proxies. Returns the figures' raw material, and
    the proxies and their handle files (for the profile, while they are still up)."""
    proxies = start_proxies(idp_url, api_url, work, stores, register)
    issuers: dict[str, str] = {}  # each store's handles are issued through its first proxy
    for c in ADDON_CONFIGS:
        issuers.setdefault(c.store, c.name)
    with ThreadPoolExecutor(len(issuers)) as pool:
        issued = dict(zip(issuers, pool.map(lambda name: issue_handles(proxies[name], plan.rotating_handles),
                                            issuers.values()), strict=True))  # fmt: skip
    plain = [random_signature() for _ in range(plan.rotating_handles)]
    files: dict[str, Path] = {}
    auth: dict[tuple[str, str], str | Path] = {}
    for config in CONFIGS:
        handles = issued[config.store] if config.store else plain
        if config.store:
            check_joins(proxies[config.name], handles[-1])
        files[config.name] = work / f"handles-{config.name}.txt"
        files[config.name].write_text("".join(h + "\n" for h in handles))
        auth[config.name, "one"] = f"Bearer {handles[0]}"
        auth[config.name, "many"] = files[config.name]

    runs_of = list(auth)
    if plan.warmup_seconds:
        for name, mode in runs_of:
            run_wrk(proxies[name], plan.warmup_seconds, plan.connections, auth[name, mode])
    runs: dict[tuple[str, str], list[WrkRun]] = {run: [] for run in runs_of}
    for r in range(plan.rounds):
        for name, mode in rotated(runs_of, r):
            runs[name, mode].append(run_wrk(proxies[name], plan.seconds, plan.connections, auth[name, mode]))
    return summarise(runs), proxies, files


def summarise(runs: dict[tuple[str, str], list[WrkRun]]) -> dict[str, Any]:
    def stat(attribute: str) -> dict[str, dict[str, float]]:
        return {mode: {name: median([getattr(run, attribute) for run in runs[name, mode]])
                       for name, m in runs if m == mode} for mode in MODES}  # fmt: skip

    def per_round(ratio: Callable[[WrkRun, WrkRun], float]) -> dict[str, dict[str, float]]:
        return {mode: {c.name: median([ratio(base, x) for base, x in
                                       zip(runs[c.baseline(), mode], runs[c.name, mode], strict=True)])
                       for c in ADDON_CONFIGS} for mode in MODES}  # fmt: skip

    return {
        "runs": {f"{name}/{mode}": [vars(run) for run in rs] for (name, mode), rs in runs.items()},
        "rps": stat("rps"),
        "p50_ms": stat("p50_ms"),
        "p99_ms": stat("p99_ms"),
        "cpu_us": stat("cpu_us_per_request"),
        "cpu_busy": stat("cpu_busy"),
        "ratio": per_round(lambda base, x: x.rps / base.rps),
        # What the ratio would be if each proxy had a whole core to itself: a saturated single-threaded
        # proxy serves 1 / (CPU per request). Neighbours taking CPU time move it far less than throughput.
        "cpu_ratio": per_round(lambda base, x: base.cpu_us_per_request / x.cpu_us_per_request),
    }


def profile_proxy(plan: Plan, proxy: Proxy, handles: Path, raw: Path) -> list[tuple[str, float, float]]:
    """py-spy on a proxy while wrk saturates it, its raw (collapsed) stacks written to ``raw``: the top frames
    as (frame, % of samples in it, % of samples in it or below it)."""
    spy = Path(os.environ.get("PY_SPY", Path(sys.executable).parent / "py-spy"))
    if not spy.exists():
        raise BenchFailed(f"--profile needs py-spy ({spy}): pip install py-spy (requirements-dev.txt)")
    recorder = subprocess.Popen(
        [str(spy), "record", "--pid", str(proxy.process.pid), "--duration", str(plan.profile_seconds),
         "--rate", "500", "--function", "--gil", "--format", "raw", "--output", str(raw), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        run_wrk(proxy, plan.profile_seconds + 1, plan.connections, handles)
    finally:
        _, errors = recorder.communicate(timeout=plan.profile_seconds + 60)
    if recorder.returncode != 0 or not raw.exists():
        raise BenchFailed(f"py-spy failed (exit {recorder.returncode}): {errors}")
    return top_frames(raw.read_text())


def top_frames(collapsed: str) -> list[tuple[str, float, float]]:
    """From py-spy's raw output (``frame;frame;… count`` per line, outermost first): each frame's share of
    samples as the innermost frame (own) and anywhere on the stack (total), by own share."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        samples += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            total[frame] += int(count)
    if not samples:
        raise BenchFailed("py-spy recorded no samples")
    top = own.most_common(PROFILE_FRAMES)
    return [(frame, 100 * n / samples, 100 * total[frame] / samples) for frame, n in top]


def propagation(proxies: dict[str, Proxy], times: int) -> dict[str, list[float]]:
    """Seconds from a revocation through one proxy (RFC 7009) to the first refusal by another proxy on the
    same store that had the handle cached, per store, ``times`` each."""
    took: dict[str, list[float]] = {store: [] for store in PROPAGATION_PAIRS}
    with requests.Session() as session:
        for store, (revoker, watcher) in PROPAGATION_PAIRS.items():
            for _ in range(times):
                took[store].append(revocation(session, proxies[revoker], proxies[watcher]))
    return took


def revocation(session: requests.Session, revoker: Proxy, watcher: Proxy) -> float:
    (handle,) = issue_handles(revoker, 1)
    headers = {"Authorization": f"Bearer {handle}"}
    for _ in range(3):  # cached by the watcher
        if session.get(watcher.api_url + "/p", headers=headers, timeout=10).status_code != 200:
            raise BenchFailed("the watching proxy did not join the handle")
    answer = session.post(revoker.idp_url + REVOKE_PATH, data={"token": handle, **CLIENT}, timeout=10)
    revoked = time.monotonic()
    if answer.status_code != 200:
        raise BenchFailed(f"revocation refused: {answer.status_code} {answer.text[:200]}")
    while (status := session.get(watcher.api_url + "/p", headers=headers, timeout=10).status_code) == 200:
        if time.monotonic() - revoked > 10:
            raise BenchFailed("the revocation never reached the other proxy")
    if status != 401:
        raise BenchFailed(f"the other proxy answered {status}, not 401")
    return time.monotonic() - revoked


def rss_probes(
    plan: Plan, idp_url: str, api_url: str, stores: dict[int, Path], work: Path
) -> dict[int, dict[str, int]]:
    """mitmdump's memory after serving joins of random records of each store: a store read from disk on
    demand keeps it flat; a store loaded into memory would grow it with the records (the record cache is
    bounded). One proxy per store, started side by side, measured one after the other."""
    rng = random.Random(SEED)

    def start(size: int) -> Proxy:
        return bench_proxy(idp_url, api_url, store=str(stores[size]), confdir=work / "conf")

    with ThreadPoolExecutor(len(stores)) as pool:
        proxies = dict(zip(stores, pool.map(start, stores), strict=True))
    try:
        memory = {}
        for size, proxy in proxies.items():
            handles = work / f"handles-{size}.txt"
            picked = (handle_for(rng.randrange(size)) for _ in range(plan.rss_handles))
            handles.write_text("".join(handle + "\n" for handle in picked))
            run_wrk(proxy, plan.rss_seconds, plan.connections, handles)
            memory[size] = memory_kib(proxy.process.pid)
        return memory
    finally:
        stop_all(proxies.values())


def start_redis_stores(work: Path, register: Callable[[Callable[[], None]], None]) -> dict[str, str]:
    """The Redis deployments the proxies share, started side by side, each stopped through ``register``: one
    redis-server, Sentinel (a master, a replica, three sentinels) and a three-master Cluster, as the tests'
    topologies (tests/redis_topologies.py). Returns their splittoken_store URLs by store name."""
    for name in ("redis", "sentinel", "cluster"):
        (work / name).mkdir()
    deployments = {
        "redis": RedisServer(work / "redis"),
        "sentinel": SentinelTopology(work / "sentinel", down_after_ms=10_000),
        "cluster": ClusterTopology(work / "cluster"),
    }
    for deployment in deployments.values():
        register(deployment.stop)  # before start: a start that fails half-way stops what it started
    with ThreadPoolExecutor(len(deployments)) as pool:
        list(pool.map(lambda deployment: deployment.start(), deployments.values()))
    return {name: deployment.url for name, deployment in deployments.items()}
