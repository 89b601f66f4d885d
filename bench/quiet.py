"""Loaded by scripts/bench.py into every benchmarked mitmdump, with or without the split-token addon.

scripts/stack.py knows a proxy is up by its "listening at" lines, which mitmdump logs at info level, so
`-q` or `termlog_verbosity=warn` from the start would hide them. Once the listeners are up (the running
hook comes after them), this drops the console to warnings: per-request info lines (the addon logs each
join) then cost no console I/O during a measurement.
"""

from mitmproxy import ctx


class Quiet:
    def running(self) -> None:
        ctx.options.update(termlog_verbosity="warn", flow_detail=0)


addons = [Quiet()]
