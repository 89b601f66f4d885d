"""Refresh grants: a refresh handle goes out as the real refresh token, one flight per handle and client.

Concurrent refreshes of one handle with the same client authentication share one upstream call; a handle just
replaced by rotation answers late or concurrent refreshes of the client that rotated it with the rotation's
answer for a grace period, so that two tabs refreshing at once do not log each other out. A request with any
other client authentication gets neither: it goes to the authorization server with the real refresh token it
would have had, and gets the server's verdict (a stolen handle and a wrong secret: 401 invalid_client).

The handles of one rotation chain are linked (a rotated handle's answer holds its successor), so that
revoking any of them ends the chain, and a revocation landing while a refresh is in flight wins.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from mitmproxy import http

from . import policy
from .answers import Answers, to_response, token_answer
from .audit import Reason
from .bodies import TokenBody
from .errors import Unparseable
from .policy import Refusal
from .refresh_lock import LEASE_SECONDS, RefreshLock, WaitedTooLong
from .routing import issued_here
from .seal import Record, store_key
from .state import FlowState
from .vault import Vault

# How long a client waiting on another request's refresh of the same handle waits before giving up.
REFRESH_WAIT_SECONDS = 60.0
STILL_UNDER_WAY = Refusal(504, "temporarily_unavailable", "refresh still under way", reason=Reason.TIMEOUT)
# Links followed from a rotated handle to its chain's current one: more rotations than a grace period sees.
CHAIN_LIMIT = 16


@dataclass
class Flight:
    """A refresh under way: the request that went upstream, and its answer for those waiting on it."""

    leader: str  # the flow's id
    client: str  # its client authentication: only requests with the same one share its answer
    answer: asyncio.Future[http.Response | None]  # None: given up, each waiting request goes on its own
    successor: str = ""  # the refresh handle its answer handed out in place of the rotated one
    withheld: str = ""  # the real refresh token of an answer withheld because a revocation won


# Refreshes under way, by refresh handle. Owned by the shell, so that flights in the air survive
# reconfiguration.
Flights = dict[str, Flight]


class Refreshes:
    def __init__(
        self, vault: Vault, answers: Answers, flights: Flights, *,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:  # fmt: skip
        self.vault = vault
        self.answers = answers
        self._flights = flights
        # Across proxies on the store, as the flights are within this one.
        self.lock = RefreshLock(vault, lease_seconds, REFRESH_WAIT_SECONDS)

    async def begin(self, flow: http.HTTPFlow, st: FlowState, body: TokenBody) -> None:
        """Swap the refresh handle in a refresh grant for the real refresh token, or answer here."""
        answers = self.answers
        handle = policy.read_handle(body.fields["refresh_token"])
        if handle is None:
            return answers.refuse(flow, st, policy.invalid_grant("unknown refresh token"))
        st.client = refreshing_client(flow, body, st.jkt)
        while (running := self._flights.get(handle)) and running.client == st.client:
            # The same client is refreshing this very handle already: wait for that answer, not race it.
            if await self._share(flow, st, running):
                return
        if handle not in self._flights:  # else another client's refresh holds it: this one runs beside it
            # Claimed before the first await, so that a refresh arriving meanwhile waits for this one.
            loop = asyncio.get_running_loop()
            self._flights[handle] = Flight(flow.id, st.client, loop.create_future())
        st.refresh_handle = handle
        record = await self.vault.find(handle)
        if record is not None and record.kind != "access" and record.jkt and record.jkt != st.jkt:
            # Refused before anything changes: the handle stays valid for the key's holder.
            refusal = policy.invalid_dpop_proof("the refresh handle is bound to another DPoP key")
            return answers.refuse(flow, st, refusal, handle)
        if record is not None and record.kind == "refresh" and issued_here(record.issuer, flow):
            # One refresh per cluster: wait for the handle's lease, or for another proxy's answer to it.
            try:
                record = await self.lock.take(flow.id, handle, st.client)
            except WaitedTooLong:
                return answers.refuse(flow, st, STILL_UNDER_WAY)
        await self._go_on(flow, st, body, handle, record)

    async def _go_on(
        self, flow: http.HTTPFlow, st: FlowState, body: TokenBody, handle: str, record: Record | None
    ) -> None:
        """With the handle's record as the store has it now: go upstream with the real refresh token, replay
        a rotation's answer to the client that rotated it, or refuse."""
        answers = self.answers
        if record is None or record.kind == "access" or not issued_here(record.issuer, flow):
            refusal = policy.invalid_grant("unknown, expired or revoked refresh token")
            return answers.refuse(flow, st, refusal, handle)
        if record.kind == "refresh":
            return self._swap(flow, st, body, handle, record.secret)
        if record.client == st.client:
            if await self._alive(handle, record):
                return self._replay(flow, st, record, "replayed the answer to a rotation")
            return answers.refuse(flow, st, policy.invalid_grant("refresh token revoked"), handle)
        # The rotation's answer is not for this client. Its rotation is over: it goes on its own, as itself.
        self._land(flow, handle, None)
        st.refresh_handle = ""
        if not record.refresh_token:  # a record older than the field: nothing to send
            return answers.refuse(flow, st, policy.invalid_grant("unknown, expired or revoked refresh token"))
        self._swap(flow, st, body, handle, record.refresh_token)

    def _swap(self, flow: http.HTTPFlow, st: FlowState, body: TokenBody, handle: str, real: str) -> None:
        body.fields["refresh_token"] = st.swapped_in = real
        st.swapped_for = handle
        flow.request.content = body.render()
        st.refresh_digest = store_key(real)  # a digest, not the token: metadata is saved with flows

    async def _share(self, flow: http.HTTPFlow, st: FlowState, running: Flight) -> bool:
        """Wait for the answer of a flight: True when the flow got it (or gave up waiting)."""
        try:
            answer = await asyncio.wait_for(asyncio.shield(running.answer), REFRESH_WAIT_SECONDS)
        except TimeoutError:
            self.answers.refuse(flow, st, STILL_UNDER_WAY)
            return True
        if answer is None:
            return False
        self.answers.answer(
            flow, st, answer.copy(), "shared a concurrent refresh", refused=answer.status_code >= 400
        )
        return True

    def settle(self, flow: http.HTTPFlow, st: FlowState, answer: http.Response | None = None) -> None:
        """The flight of this flow's refresh is over: clients waiting on it get the same answer, here at
        once, on other proxies from the store (its answer is stored by now) once the lease goes."""
        self.lock.release(flow.id)
        handle, st.refresh_handle = st.refresh_handle, ""
        if handle:
            self._land(flow, handle, answer or flow.response or to_response(policy.bad_gateway("no answer")))

    def _led(self, flow: http.HTTPFlow, handle: str) -> Flight | None:
        """The flight of ``handle`` if ``flow`` leads it: another flow's refresh of the same handle (another
        client's) runs beside it and must not end it."""
        running = self._flights.get(handle)
        return running if running and running.leader == flow.id else None

    def _land(self, flow: http.HTTPFlow, handle: str, answer: http.Response | None) -> None:
        if running := self._led(flow, handle):
            del self._flights[handle]
            if not running.answer.done():
                running.answer.set_result(answer)

    async def refused(self, flow: http.HTTPFlow, st: FlowState) -> None:
        """The authorization server refused the refresh token behind the flow's handle. If another proxy on
        the same store rotated it meanwhile, its answer is there to replay to the same client; otherwise the
        handle is dead, unless another request of it is still in flight here (it is the one that counts)."""
        handle = st.refresh_handle
        current = await self.vault.find(handle)
        if current is None:
            return
        if current.kind == "rotated":
            if current.client == st.client and await self._alive(handle, current):
                self._replay(flow, st, current, "replayed a rotation made by another proxy")
        elif store_key(current.secret) == st.refresh_digest:
            beside = handle in self._flights and not self._led(flow, handle)
            if not beside:
                await self.vault.forget(handle)

    def _replay(self, flow: http.HTTPFlow, st: FlowState, rotated: Record, note: str) -> None:
        self.answers.answer(flow, st, token_answer(rotated.secret.encode()), note, refused=False)

    async def revoked_meanwhile(self, flow: http.HTTPFlow, st: FlowState, withheld: str) -> bool:
        """Whether the flow's refresh handle was revoked while its refresh was in flight, here or by another
        proxy on the store: then the answer's handles are not handed out. ``withheld``, the real refresh
        token of that answer, goes to a revocation waiting here on this flight, to be revoked instead."""
        if await self.vault.find(st.refresh_handle) is not None:
            return False
        if running := self._led(flow, st.refresh_handle):
            running.withheld = withheld
        return True

    async def retire(
        self, flow: http.HTTPFlow, st: FlowState, successor: str, replay: Record, grace: int
    ) -> None:
        """The flow's refresh handle was rotated into ``successor``: for ``grace`` seconds it keeps answering
        its client with the rotation's answer, ``replay``."""
        if running := self._led(flow, st.refresh_handle):
            running.successor = successor
        if grace:
            await self.vault.keep(st.refresh_handle, replay)
        else:
            await self.vault.forget(st.refresh_handle)

    async def end(self, handle: str, record: Record, *, now: bool = True) -> tuple[str | None, bool]:
        """Revoke a refresh handle: every handle of its rotation chain from it on is forgotten, and the
        chain's current real refresh token is returned, for the authorization server to revoke (None when
        the chain had ended already), with whether the chain was forgotten. A refresh of the current handle
        in flight here is waited for, so that what it brings ends too: its answer is withheld, or if it was
        handed out, the chain goes on from there. ``now=False``: with no refresh in flight, nothing is
        forgotten yet, only found: the caller forgets once the authorization server has accepted the
        revocation (which checks the client's credentials: a thief's revocation must not log anyone out)."""
        chain = await self._chain(handle, record)
        current, last = chain[-1]
        real = last.secret if last.kind == "refresh" else None
        running = self._flights.get(current)
        if running is None and not now and real is not None:
            return real, False
        for link, _ in chain:
            await self.vault.forget(link)
        if running is None:
            return real, True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(running.answer), REFRESH_WAIT_SECONDS)
        if running.withheld:
            return running.withheld, True
        # The flight may have rotated the handle before it saw the revocation: that record goes too, and the
        # chain goes on from the successor it handed out.
        await self.vault.forget(current)
        if running.successor and (successor := await self.vault.find(running.successor)):
            return await self.end(running.successor, successor)
        return real, True

    async def after_other_proxies(
        self, flow: http.HTTPFlow, handle: str, record: Record, client: str
    ) -> Record:
        """``handle``'s record once no other proxy on the store has a refresh of its chain's current handle
        for ``client`` upstream: a revocation waits for such a refresh (it holds the lease), so that the
        refresh token its answer brings is the one revoked, as ``end`` does for a refresh in flight here."""
        current, last = (await self._chain(handle, record))[-1]
        if last.kind != "refresh" or current in self._flights:
            return record
        with contextlib.suppress(WaitedTooLong):
            await self.lock.take(flow.id, current, client)
            self.lock.release(flow.id)
        return await self.vault.find(handle) or record

    async def _chain(self, handle: str, record: Record) -> list[tuple[str, Record]]:
        """The rotation chain from ``handle`` on, to its current refresh handle (kind "refresh", last), or to
        where it breaks off: a successor revoked or expired, or further than CHAIN_LIMIT."""
        chain = [(handle, record)]
        while record.kind == "rotated" and len(chain) <= CHAIN_LIMIT:
            successor = _successor(record)
            found = await self.vault.find(successor) if successor else None
            if found is None or found.kind == "access":
                break
            handle, record = successor, found
            chain.append((handle, record))
        return chain

    async def _alive(self, handle: str, rotated: Record) -> bool:
        """Whether a rotated handle's chain still ends in a live refresh handle: its replay hands one out."""
        chain = await self._chain(handle, rotated)
        return chain[-1][1].kind == "refresh"


def refreshing_client(flow: http.HTTPFlow, body: TokenBody, jkt: str | None) -> str:
    """Who a client refreshing a handle (or revoking it) is: its client authentication, and the DPoP key,
    which is part of who the client is (RFC 9449 §5): no other key shares its flight, lease or replay."""
    client = policy.client_authentication(flow.request.headers.get("authorization", ""), body.fields)
    return client + (f"#{jkt}" if jkt else "")


def _successor(rotated: Record) -> str | None:
    """The refresh handle the answer of a rotation gave: the next link of the chain."""
    try:
        fields = TokenBody.parse("", rotated.secret.encode()).fields
    except Unparseable:
        return None
    return policy.read_handle(fields.get("refresh_token"))


def refresh_expiry(body: TokenBody, now: float, max_ttl: int) -> float:
    # Keycloak sends refresh_expires_in 0 for offline tokens, meaning "no fixed expiry": use the cap.
    relative = policy.number(body.fields.get("refresh_expires_in"))
    return policy.expiry(now, expires_in=relative or None, max_ttl=max_ttl)
