"""Prometheus metrics, served on a listener of their own (``splittoken_metrics``), never through the proxy's.

    metrics = Metrics()
    metrics.serve(*parse_listen_address("127.0.0.1:9100"))
    metrics.join(seconds=0.00004)
    metrics.refuse(Reason.UNKNOWN_HANDLE)
    ...
    metrics.close()

Each ``Metrics`` owns its registry, so two instances (two addons, two tests) never collide and nothing lands
in prometheus_client's global one. No label carries free text: the only label, ``reason``, takes the values
of ``audit.Reason``. Counting is cheap (about 1 µs a counter, 3 µs a join with its histogram); the gauges
are read when scraped, on the listener's thread, by callables the proxy sets. The store's size is not among
them: counting a store's records is a scan (Redis SCAN, a SQL count), too slow for every scrape.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .audit import Reason

logger = logging.getLogger(__name__)

# A join is tens of microseconds from a cache, a millisecond or so with a Redis round trip; a store timeout
# ends at seconds. The default buckets start at 5 ms and would put every cached join in the first one.
JOIN_BUCKETS = (
    25e-6, 50e-6, 100e-6, 150e-6, 250e-6, 500e-6,
    1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1.0, 2.5,
)  # fmt: skip

_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")
_PORT = re.compile(r"[0-9]{1,5}")


def parse_listen_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as (host, port), brackets removed. Port 0 asks the system for
    a free port (``serve`` returns the one it got). Raises ValueError saying what is wrong."""
    example = "expected host:port, e.g. 127.0.0.1:9100 or [::1]:9100"
    if "://" in text:
        raise ValueError(f"{text!r}: {example}, without a scheme or a path")
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r}: {example} (0.0.0.0:port or [::]:port for every interface)")
    if not _PORT.fullmatch(port) or int(port) > 65535:
        raise ValueError(f"{text!r}: the port must be a number from 0 to 65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{text!r}: {host} is not an IPv6 address") from None
        return host[1:-1], int(port)
    if ":" in host:
        raise ValueError(f"{text!r}: an IPv6 address goes in brackets, e.g. [::1]:9100")
    if not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{text!r}: {host!r} is neither an IP address nor a host name; {example}")
    return host, int(port)


class Metrics:
    """The proxy's counters, its join latency histogram and the values read when scraped.

    The gauge sources are plain attributes, callables returning a number, None (the default) leaving the
    metric out. They run on the listener's thread at every scrape, so they must be thread-safe and quick
    (a value the proxy keeps up to date, not a store scan); one that raises leaves its metric out.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.cache_entries: Callable[[], float] | None = None
        self.audit_dropped: Callable[[], float] | None = None
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

        def counter(name: str, documentation: str) -> Counter:
            return Counter(name, documentation, registry=self.registry)

        self._splits = counter("splittoken_splits_total", "Access tokens split into a handle.")
        self._joins = counter("splittoken_joins_total", "Handles swapped back for their JWT on an API call.")
        self._refreshes = counter("splittoken_refreshes_total", "Refresh grants answered with new handles.")
        self._revocations = counter("splittoken_revocations_total", "Handles revoked.")
        self._introspections = counter("splittoken_introspections_total", "Handles introspected.")
        self._store_errors = counter("splittoken_store_errors_total", "Store calls that failed.")
        refusals = Counter(
            "splittoken_refusals_total", "Requests refused, by reason.", ["reason"], registry=self.registry
        )
        # Every reason is exported from the start (at 0), so that rate() and alerts see a series at once.
        self._refusals = {reason: refusals.labels(reason.value) for reason in Reason}
        self._join_seconds = Histogram(
            "splittoken_join_seconds",
            "Time to swap a handle for its JWT (store read or cache, and opening the record).",
            registry=self.registry,
            buckets=JOIN_BUCKETS,
        )
        self.registry.register(_Sampled(self))

    def split(self) -> None:
        self._splits.inc()

    def join(self, seconds: float) -> None:
        self._joins.inc()
        self._join_seconds.observe(seconds)

    def refuse(self, reason: Reason | str) -> None:
        """Count a refusal; a reason outside ``Reason`` counts as ``other``."""
        self._refusals.get(reason, self._refusals[Reason.OTHER]).inc()

    def refresh(self) -> None:
        self._refreshes.inc()

    def revoke(self) -> None:
        self._revocations.inc()

    def introspect(self) -> None:
        self._introspections.inc()

    def store_error(self) -> None:
        self._store_errors.inc()

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Serve the text exposition format (at ``/metrics``, and any other path, as prometheus_client does)
        on a listener and thread of its own; returns the address bound. Raises OSError when it cannot bind."""
        if self._server is not None:
            raise RuntimeError("metrics are already served; close() first")
        self._server, self._thread = start_http_server(port, host, registry=self.registry)
        bound_host, bound_port = self._server.server_address[:2]
        return str(bound_host), int(bound_port)

    def close(self) -> None:
        """Stop serving and free the port (the server polls for shutdown twice a second, so this can take
        half a second). Does nothing when not serving."""
        if self._server is None or self._thread is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None


# (attribute of Metrics holding the source, metric family, name, help): the metrics read when scraped.
_SAMPLED = (
    ("cache_entries", GaugeMetricFamily, "splittoken_cache_entries",
     "Opened records held in the proxy's cache."),
    ("audit_dropped", CounterMetricFamily, "splittoken_audit_dropped_total",
     "Audit events that never reached the audit log (queue full, trail closed, write failed)."),
)  # fmt: skip


class _Sampled:
    """The collector of the metrics in _SAMPLED."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return [family(name, documentation) for _, family, name, documentation in _SAMPLED]

    def collect(self) -> Iterator[Metric]:
        for attribute, family, name, documentation in _SAMPLED:
            source: Callable[[], float] | None = getattr(self._metrics, attribute)
            if source is None:
                continue
            try:
                value = float(source())
            except Exception as e:
                logger.debug("%s left out of this scrape: %s", name, e)
                continue
            yield family(name, documentation, value=value)
