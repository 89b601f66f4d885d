"""Loaded by scripts/bench.py into every -q mitmdump it benchmarks, with or without the split-token addon.

mitmdump's -q is termlog_verbosity=error and flow_detail=0. scripts/stack.py knows a proxy is up by its
"listening at" lines, which mitmdump logs at info level, so -q from the start would hide them: the benchmark
sets flow_detail=0 on the command line, and this sets the verbosity once the listeners are up (the running
hook comes after them). Per-request lines (the addon's info line per join) then cost no console I/O.
"""

from mitmproxy import ctx


class Quiet:
    def running(self) -> None:
        ctx.options.update(termlog_verbosity="error", flow_detail=0)


addons = [Quiet()]
