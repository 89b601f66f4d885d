"""Refresh grants: a refresh handle goes out as the real refresh token, one flight per handle.

Concurrent refreshes of one handle share one upstream call; a handle just replaced by rotation answers late
or concurrent refreshes with its successor's answer for a grace period, so that two tabs refreshing at once
do not log each other out.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from mitmproxy import http

from . import policy
from .answers import Answers, to_response, token_answer
from .policy import Refusal, TokenBody
from .routing import issued_here
from .seal import Record, store_key
from .state import FlowState
from .vault import Vault

# How long a client waiting on another client's refresh of the same handle waits before giving up.
REFRESH_WAIT_SECONDS = 60.0


# Refreshes under way, by refresh handle. Owned by the shell, so that flights in the air survive
# reconfiguration.
Flights = dict[str, asyncio.Future[http.Response]]


class Refreshes:
    def __init__(self, vault: Vault, answers: Answers, counters: Counter[str], flights: Flights) -> None:
        self.vault = vault
        self.answers = answers
        self.counters = counters
        self._flights = flights

    async def begin(self, flow: http.HTTPFlow, st: FlowState, body: TokenBody) -> None:
        """Swap the refresh handle in a refresh grant for the real refresh token, or answer here."""
        answers = self.answers
        handle = policy.read_handle(body.fields["refresh_token"])
        if handle is None:
            return answers.refuse(flow, st, policy.invalid_grant("unknown refresh token"))
        if running := self._flights.get(handle):
            # Someone is refreshing this very handle: wait for their answer instead of racing them.
            return await self._share(flow, st, running)
        # Claimed before the first await, so that a second refresh arriving meanwhile waits for this one.
        self._flights[handle] = asyncio.get_running_loop().create_future()
        st.refresh_handle = handle
        record = await self.vault.find(handle)
        if record is None or record.kind == "access" or not issued_here(record.issuer, flow):
            return answers.refuse(flow, st, policy.invalid_grant("unknown, expired or revoked refresh token"))
        if record.kind == "rotated":
            return self._replay(flow, st, record, "replayed the answer to a rotation")
        body.fields["refresh_token"] = record.secret
        flow.request.content = body.render()
        st.refresh_digest = store_key(record.secret)  # a digest, not the token: metadata is saved with flows
        self.counters["refreshes"] += 1

    async def _share(
        self, flow: http.HTTPFlow, st: FlowState, running: asyncio.Future[http.Response]
    ) -> None:
        answers = self.answers
        try:
            answer = await asyncio.wait_for(asyncio.shield(running), REFRESH_WAIT_SECONDS)
        except TimeoutError:
            return answers.refuse(
                flow, st, Refusal(504, "temporarily_unavailable", "refresh still under way")
            )
        answers.answer(
            flow, st, answer.copy(), "shared a concurrent refresh", refused=answer.status_code >= 400
        )

    def settle(self, flow: http.HTTPFlow, st: FlowState, answer: http.Response | None = None) -> None:
        """The flight of this flow's refresh is over: clients waiting on it get the same answer."""
        handle, st.refresh_handle = st.refresh_handle, ""
        running = self._flights.pop(handle, None) if handle else None
        if running and not running.done():
            running.set_result(answer or flow.response or to_response(policy.bad_gateway("no response")))

    async def refused(self, flow: http.HTTPFlow, st: FlowState) -> None:
        """The authorization server refused the refresh token behind the flow's handle. If another proxy on
        the same store rotated it meanwhile, its answer is there to replay; otherwise the handle is dead."""
        handle = st.refresh_handle
        current = await self.vault.find(handle)
        if current is None:
            return
        if current.kind == "rotated":
            self._replay(flow, st, current, "replayed a rotation made by another proxy")
        elif store_key(current.secret) == st.refresh_digest:
            await self.vault.forget(handle)

    def _replay(self, flow: http.HTTPFlow, st: FlowState, rotated: Record, note: str) -> None:
        self.answers.answer(flow, st, token_answer(rotated.secret.encode()), note, refused=False)

    async def retire(self, handle: str, replay: Record, grace: int) -> None:
        """A rotated refresh handle keeps answering with its successor's answer for ``grace`` seconds."""
        if grace:
            await self.vault.keep(handle, replay)
        else:
            await self.vault.forget(handle)


def refresh_expiry(body: TokenBody, now: float, max_ttl: int) -> float:
    # Keycloak sends refresh_expires_in 0 for offline tokens, meaning "no fixed expiry": use the cap.
    relative = policy.number(body.fields.get("refresh_expires_in"))
    return policy.expiry(now, expires_in=relative or None, max_ttl=max_ttl)
