"""What happened to the handles, told once by the routes: counted for ``splittoken.stats``, and passed on to
Prometheus (``splittoken_metrics``) and the audit trail (``splittoken_audit_log``) when those are on.

    events = Events()
    events.configure(metrics=("127.0.0.1", 9100), audit_log="/var/log/splittoken/audit.log")
    events.join(flow, st, seconds=0.00004)
    events.refuse(flow, st, Reason.UNKNOWN_HANDLE)
    ...
    events.close()

A route hands over the handle itself, or on joins and refusals the flow's state with the handle's id; what
leaves this module is its ``audit.handle_id``, never the handle. Nothing here blocks the event loop: a
counter, a histogram observation, a line put on the audit trail's queue. The audit trail and the metrics
listener outlive reconfiguration unless their option changes.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from mitmproxy import http

from .audit import Event, Reason, handle_id
from .audit_trail import AuditTrail
from .errors import OptionInvalid
from .metrics import Metrics
from .state import FlowState
from .vault import Vault

logger = logging.getLogger("splittoken")

# The names of the in-process counts, as splittoken.stats prints them.
COUNTS = (
    "splits",
    "dpop_bound_splits",
    "bearer_splits",
    "joins",
    "refreshes",
    "revocations",
    "introspections",
    "refusals",
    "store_errors",
)


def _client(flow: http.HTTPFlow | None) -> tuple[Any, ...] | None:
    return flow.client_conn.peername if flow is not None else None


class Events:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        # Which refusals, by reason: the same numbers splittoken_refusals_total has.
        self.refusals: Counter[Reason] = Counter()
        # Set while they are on: the event methods test these, nothing more, when they are off.
        self.metrics: Metrics | None = None
        self.audit: AuditTrail | None = None
        self._metrics = Metrics()  # one registry: the counts go on across a moved listener
        self._metrics.audit_dropped = self._audit_dropped
        self._listening: tuple[str, int] | None = None  # as configured (port 0: any)
        self._dropped = 0  # by audit trails closed since: the counter must never go down
        self.metrics_address: tuple[str, int] | None = None  # as bound

    # -----------------------------------------------------------------------------------------------------
    # Configuration

    def configure(self, metrics: tuple[str, int] | None, audit_log: str) -> None:
        """Serve the metrics at ``metrics`` (None: off) and append the audit trail to ``audit_log`` (empty:
        off); what is unchanged stays as it is. Raises OptionInvalid when the file cannot be written (nothing
        changes then) or the port cannot be bound (the metrics are off then)."""
        trail = self.audit
        if audit_log != (trail.path if trail else ""):
            try:
                trail = AuditTrail(audit_log) if audit_log else None
            except OSError as e:
                raise OptionInvalid("splittoken_audit_log", f"cannot append to {audit_log!r}: {e}") from None
        if metrics != self._listening:
            try:
                self._serve(metrics)
            except OSError as e:
                if trail is not self.audit and trail is not None:
                    trail.close()
                where = f"{metrics[0]}:{metrics[1]}" if metrics else ""
                raise OptionInvalid("splittoken_metrics", f"cannot listen on {where}: {e}") from None
        if trail is not self.audit:
            self._close_audit()
            self.audit = trail
            if trail is not None:
                logger.info("splittoken: audit trail in %s", trail.path)

    def _serve(self, address: tuple[str, int] | None) -> None:
        self._metrics.close()
        self.metrics = None
        self._listening = self.metrics_address = None
        if address is None:
            return
        self.metrics_address = self._metrics.serve(*address)
        self._listening, self.metrics = address, self._metrics
        logger.info("splittoken: metrics at http://%s:%d/metrics", *self.metrics_address)

    def watch(self, vault: Vault) -> None:
        """Export the size of ``vault``'s record cache (read when scraped)."""
        cache = vault.cache
        self._metrics.cache_entries = (lambda: len(cache)) if cache is not None else None

    def _audit_dropped(self) -> float:
        return self._dropped + (self.audit.dropped if self.audit is not None else 0)

    def close(self) -> None:
        """Stop serving metrics and write what the audit trail has queued."""
        self._serve(None)
        self._close_audit()

    def _close_audit(self) -> None:
        if self.audit is None:
            return
        if not self.audit.close():
            logger.warning("audit trail %s: writer still busy, finishing in the background", self.audit.path)
        self._dropped += self.audit.dropped
        self.audit = None

    # -----------------------------------------------------------------------------------------------------
    # Events: ``handle`` is the handle itself, ``sub`` the token's subject ("" when unknown).

    def split(
        self,
        flow: http.HTTPFlow,
        handle: str | None,
        refresh_handle: str | None,
        sub: str,
        bound: bool = False,
    ) -> None:
        """A token response was handed out with ``handle`` (None: no access token split) and
        ``refresh_handle`` (None: no refresh token) in place of its tokens; ``bound``: to a DPoP key."""
        self.counts["splits"] += 1
        self.counts["dpop_bound_splits" if bound else "bearer_splits"] += 1
        if self.metrics is not None:
            self.metrics.split()
        if self.audit is not None:
            self._record(Event.SPLIT, flow, sub, handle_id=_id(handle), refresh_handle_id=_id(refresh_handle))

    def join(self, flow: http.HTTPFlow, st: FlowState, seconds: float) -> None:
        """The handle of ``st`` (its ``handle_id`` and ``subject`` set) was swapped for its JWT on an API
        call, in ``seconds``. The route hashed the handle already, for the flow's state: not again here."""
        self.counts["joins"] += 1
        if self.metrics is not None:
            self.metrics.join(seconds)
        if self.audit is not None:
            self._record(Event.JOIN, flow, st.subject, handle_id=st.handle_id)

    def refuse(self, flow: http.HTTPFlow, st: FlowState, reason: Reason) -> None:
        """The proxy answered itself with an error, about the handle of ``st`` if it has a ``handle_id``
        (one the request presented, or one it joined before its answer was refused)."""
        self.counts["refusals"] += 1
        self.refusals[reason] += 1
        if self.metrics is not None:
            self.metrics.refuse(reason)
        if self.audit is not None:
            self._record(Event.REFUSE, flow, st.subject, handle_id=st.handle_id or None, reason=reason)

    def refresh(
        self, flow: http.HTTPFlow, old_handle: str, new_handle: str, handle: str | None, sub: str
    ) -> None:
        """A refresh grant presenting refresh handle ``old_handle`` was answered: the client refreshes with
        ``new_handle`` from now on (the same one when the server did not rotate) and calls APIs with
        ``handle`` (None: no access token split)."""
        self.counts["refreshes"] += 1
        if self.metrics is not None:
            self.metrics.refresh()
        if self.audit is not None:
            self._record(
                Event.REFRESH, flow, sub, handle_id=_id(handle),
                old_handle_id=handle_id(old_handle), new_handle_id=handle_id(new_handle),
            )  # fmt: skip

    def revoke(self, flow: http.HTTPFlow | None, handle: str, sub: str) -> None:
        """``handle`` (access or refresh) was revoked; ``flow`` None: by the splittoken.revoke command."""
        self.counts["revocations"] += 1
        if self.metrics is not None:
            self.metrics.revoke()
        if self.audit is not None:
            self._record(Event.REVOKE, flow, sub, handle_id=handle_id(handle))

    def introspect(self, flow: http.HTTPFlow, handle: str, sub: str) -> None:
        """An introspection request about ``handle`` went to the authorization server, or was answered here
        (a rotated refresh handle)."""
        self.counts["introspections"] += 1
        if self.metrics is not None:
            self.metrics.introspect()
        if self.audit is not None:
            self._record(Event.INTROSPECT, flow, sub, handle_id=handle_id(handle))

    def store_error(self) -> None:
        self.counts["store_errors"] += 1
        if self.metrics is not None:
            self.metrics.store_error()

    def _record(self, event: Event, flow: http.HTTPFlow | None, sub: str, **ids: str | None) -> None:
        assert self.audit is not None
        client = _client(flow)
        try:
            self.audit.record(event, sub=sub or None, client=client, **ids)
        except ValueError:
            # A sub that is no printable text (or looks like a token), or a client that is no IP address:
            # the event is recorded without them rather than lost.
            self.audit.record(event, **ids)


def _id(handle: str | None) -> str | None:
    return handle_id(handle) if handle else None
