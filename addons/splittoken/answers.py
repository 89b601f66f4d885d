"""Answers the proxy gives itself, and the notes it leaves on flows for mitmweb.

A refusal (policy.Refusal) becomes an HTTP response here, and an authorization server's answer to a
request the proxy put a real token into reaches the client without that token (``pass_on``). Every hook's
work runs under ``guard`` so that no failure lets a token through: a store outage answers 503, anything
unexpected answers the route's error.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable

from mitmproxy import http

from . import leaks, policy
from .audit import Reason, handle_id
from .cors import Cors
from .errors import StoreUnavailable
from .events import Events
from .policy import Refusal
from .routing import logged_path
from .state import FlowState

logger = logging.getLogger("splittoken")


class Answers:
    def __init__(self, events: Events) -> None:
        self.events = events
        self.cors = Cors()  # what browser origins may read of these answers; lives as long as the addon

    def answer(
        self, flow: http.HTTPFlow, st: FlowState, response: http.Response, note: str, refused: bool = True
    ) -> None:
        """Answer the client from the proxy: the request goes no further (or its answer is replaced)."""
        flow.request.stream = False
        self.cors.allow(flow, response)
        flow.response = response
        st.answered = True
        if refused:
            st.refused = note
        annotate(flow, note, refused)

    def refuse(self, flow: http.HTTPFlow, st: FlowState, refusal: Refusal, handle: str = "") -> None:
        """``handle``: the handle the request presented, when known, for the audit trail."""
        if handle:
            st.handle_id = handle_id(handle)
        self.answer(flow, st, to_response(refusal), f"refused: {refusal.description}")
        self.events.refuse(flow, st, refusal.reason)
        logger.info("refused %s %s: %s", flow.request.method, logged_path(flow), refusal.description)

    def swapped_out(self, flow: http.HTTPFlow, st: FlowState, body: bytes) -> bytes | None:
        """``body``, the client's answer to a request the proxy put a real token into (a refresh, a
        revocation, an introspection), with that token replaced by its handle. None, the answer refused,
        when the token is still there in a form a client could read (escaped, percent-encoded, in a
        header)."""
        if not st.swapped_in:
            return body
        assert flow.response
        headers = [value for _, value in flow.response.headers.items(multi=True)]
        clean = leaks.scrubbed(body, headers, st.swapped_in, st.swapped_for)
        if clean is None:
            self.refuse(flow, st, policy.bad_gateway("an answer quoting the token the proxy sent"))
        return clean

    def pass_on(self, flow: http.HTTPFlow, st: FlowState, raw: bytes) -> None:
        """The authorization server's answer, ``raw`` its decoded body, goes to the client as the server
        wrote it, but without the real token the proxy put into the request (``swapped_out``)."""
        assert flow.response
        clean = self.swapped_out(flow, st, raw)
        if clean is not None and clean != raw:
            flow.response.content = clean

    async def guard(
        self, flow: http.HTTPFlow, st: FlowState, work: Awaitable[None], on_error: Refusal
    ) -> None:
        """Run a hook's work so that no failure lets a token through, and publish what it learnt."""
        try:
            await work
        except Exception as e:
            self._failed(flow, st, e, on_error)
        finally:
            st.publish(flow.metadata)

    def guard_now(
        self, flow: http.HTTPFlow, st: FlowState, work: Callable[[], None], on_error: Refusal
    ) -> None:
        """``guard`` for work that never waits (an API's answer, judged in place)."""
        try:
            work()
        except Exception as e:
            self._failed(flow, st, e, on_error)
        finally:
            st.publish(flow.metadata)

    def _failed(self, flow: http.HTTPFlow, st: FlowState, e: Exception, on_error: Refusal) -> None:
        if isinstance(e, StoreUnavailable):
            logger.error("token store unavailable: %s", e)
            self.events.store_error()
            self.refuse(flow, st, policy.STORE_UNAVAILABLE)
        else:
            # Instead of mitmproxy's default of forwarding the flow as is. The text could hold a token: log
            # the type only.
            logger.error("split-token failed on %s: %s", logged_path(flow), type(e).__name__)
            self.refuse(flow, st, dataclasses.replace(on_error, reason=Reason.INTERNAL))


def annotate(flow: http.HTTPFlow, note: str, refused: bool = False) -> None:
    flow.comment = f"split-token: {note}"
    if refused:
        flow.marked = ":no_entry_sign:"


def to_response(refusal: Refusal) -> http.Response:
    headers = {"Content-Type": "application/json", "Cache-Control": "no-store", **dict(refusal.headers)}
    return http.Response.make(refusal.status, refusal.body(), headers)


def token_answer(body: bytes) -> http.Response:
    """A token response the proxy replays itself (a rotation's answer), as RFC 6749 §5.1 has it."""
    ctype = "application/json" if body.lstrip().startswith(b"{") else "application/x-www-form-urlencoded"
    headers = {"Content-Type": ctype, "Cache-Control": "no-store", "Pragma": "no-cache"}
    return http.Response.make(200, body, headers)
