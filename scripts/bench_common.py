"""What every part of the benchmark (scripts/bench.py) shares: the plan, the failure, and the handles of a
filled store. Importing it puts the splittoken package and the tests' Redis helpers (redis_server.py,
redis_topologies.py) on sys.path."""

from __future__ import annotations

import base64
import hashlib
import math
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "addons"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from stack import CLIENT

SEED = 7
TOKEN_FORM = {"grant_type": "client_credentials", **CLIENT}
# The demo IdP's default 300 s would expire the handles in the middle of a full run.
ACCESS_TTL = 3600
# What an RS256 signature (2048-bit key) looks like in base64url, hence a handle: 256 bytes, 342 characters.
SIGNATURE_BYTES = 256


@dataclass(frozen=True)
class Plan:
    rounds: int  # through processes: alternating rounds over every proxy and handle mode
    seconds: int  # wrk duration of each run
    warmup_seconds: int  # one unmeasured run per proxy and mode first (0: none)
    # wrk -c: keeps each single-threaded proxy saturated (see "busy" in the results) with requests queued, as
    # at a high request rate. The proxy opens one upstream connection per client connection, all at once; the
    # demo servers' listen backlog of 128 takes them (with socketserver's default of 5, a SYN beyond it was
    # retried after 1 s: see max_ms in results.json). Latency at -c16 is mostly queueing: about
    # connections / throughput.
    connections: int
    rotating_handles: int  # distinct handles of the "many handles" mode
    sizes: tuple[int, int, int]  # records in the three DiskStores
    micro_rounds: int  # in process: alternating rounds over the three stores
    joins: int  # join calls (and bare lookups) per store, kind of join and round
    working_set: int  # distinct handles the cached joins rotate through
    splits: int  # split calls per store and round
    rss_seconds: int  # wrk run against the RSS probe proxy
    rss_handles: int  # distinct handles that run rotates through
    profile_seconds: int  # py-spy on a proxy under wrk (--profile)
    chain_flows: int  # flows per run of scripts/bench_chain.py (one run per kind and round)


FULL = Plan(
    rounds=5, seconds=5, warmup_seconds=2, connections=16, rotating_handles=1_000,
    sizes=(1_000, 100_000, 1_000_000), micro_rounds=5, joins=2_000, working_set=1_000, splits=400,
    rss_seconds=5, rss_handles=20_000, profile_seconds=10, chain_flows=3_000,
)  # fmt: skip
QUICK = Plan(
    rounds=1, seconds=1, warmup_seconds=0, connections=16, rotating_handles=50,
    sizes=(100, 300, 1_000), micro_rounds=1, joins=200, working_set=50, splits=40,
    rss_seconds=1, rss_handles=300, profile_seconds=1, chain_flows=200,
)  # fmt: skip


class BenchFailed(Exception):
    """A measurement would be meaningless (errors under load, a refused handle): stop, report nothing."""


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
