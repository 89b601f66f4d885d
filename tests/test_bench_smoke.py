"""A short run of the benchmark (scripts/bench.py --quick), so that it cannot rot unnoticed: every process it
drives starts, every figure gets a number, and the result files and the profiles are written."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.e2e

# Figures the issues ask for; the sizes behind them differ between --quick and a full run, the ids do not.
# Proxies (a)-(d), (h) (Redis Sentinel) and (i) (Redis Cluster) run with -q, (e)-(g) with mitmdump's
# default output; "_many": many handles rotating.
REQUIRED = {
    *(f"{kind}_{config}{mode}" for kind in ("rps", "p50", "p99", "cpu", "busy") for config in "abcdefghij"
      for mode in ("", "_many")),
    *(f"{kind}_{pair}{mode}" for kind in ("ratio", "cpu_ratio")
      for pair in ("b_a", "c_a", "d_a", "f_e", "g_e", "h_a", "i_a", "j_a") for mode in ("", "_many")),
    *(f"propagation_{store}" for store in ("disk", "redis", "sentinel", "cluster")),
    *(f"{op}_{stat}_{tier}" for op in ("split", "join", "join_miss", "join_nocache", "lookup")
      for stat in ("median", "p99") for tier in ("small", "mid", "large")),
    "join_median_large_logged", "join_p99_large_logged", "join_hit_share",
    "lookup_ratio", "lookup_p99_ratio", "join_ratio", "fill_rate",
    *(f"{kind}_{tier}" for kind in ("bytes_per_record", "rss") for tier in ("small", "mid", "large")),
    "rss_ratio",
}  # fmt: skip
# The issues' targets: each must be judged, met or not.
TARGETED = {
    *(f"ratio_{pair}{mode}" for pair in ("b_a", "c_a", "h_a", "i_a", "j_a") for mode in ("", "_many")),
    *(f"propagation_{store}" for store in ("disk", "redis", "sentinel", "cluster")),
    "join_median_large", "join_p99_large",
    "lookup_ratio", "rss_ratio",
}  # fmt: skip
# What the addon adds in mitmdump's chain (scripts/bench_report.chain_figures): addon minus plain, per round.
DIFFERENCES = {"chain_cost", "chain_share"}
# Ten mitmdumps under wrk (on a diskcache directory, a Redis, a Redis Sentinel and a Redis Cluster), two that
# revoke for the propagation, three more for the RSS, and two profiles: about 50 s on two busy cores.
SMOKE_SECONDS = 90


def test_quick_run_reports_every_figure_with_a_number(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=2 * SMOKE_SECONDS, check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    assert elapsed < SMOKE_SECONDS, f"the quick run took {elapsed:.1f} s"

    results = json.loads((tmp_path / "results.json").read_text())
    figures = {figure["id"]: figure for figure in results["figures"]}
    assert not REQUIRED - figures.keys(), f"missing: {sorted(REQUIRED - figures.keys())}"
    for figure in figures.values():
        value = figure["value"]
        assert isinstance(value, int | float) and math.isfinite(value), figure
        # A difference of two noisy medians (tiny in a quick run) may come out below zero; nothing else may.
        assert value > 0 or figure["id"] in DIFFERENCES, figure
    for name in TARGETED:
        assert figures[name]["target"] and isinstance(figures[name]["met"], bool), figures[name]
    for key in ("cpu", "cores", "memory_gib", "python", "mitmproxy", "date"):
        assert results["machine"][key], key

    table = (tmp_path / "results.md").read_text()
    for figure in figures.values():
        assert f"| {figure['label']} |" in table
    assert table.strip().splitlines()[-1] in done.stdout  # the table is printed too
    assert "Vault.find" in (tmp_path / "profile-join.txt").read_text()
    for proxy in "bc":  # py-spy's frames of a proxy under wrk, and the top ones in the table
        frames = (tmp_path / f"profile-load-{proxy}.txt").read_text()
        assert frames.startswith("| frame | own | total |") and "(mitmproxy/" in frames
        assert f"## Profile of ({proxy})" in table
    assert results["profiles"]["b"] and results["raw"]["propagation_s"]["redis"]
