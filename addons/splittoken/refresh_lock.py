"""One refresh per cluster: a lease in the store on a refresh handle, held while its refresh is upstream.

Proxies on one store (a shared directory, one Redis, Sentinel or Cluster) agree through it which of them
sends a refresh handle's refresh token to the authorization server. The holder renews the lease while the
call runs, so that a slow authorization server does not let a second refresh start, and drops it once the
answer is in the store: the rotated handle's record then holds the answer (token_route writes it), which the
refresh module replays to a waiter with the same client authentication. Waiters elsewhere poll the store in
short steps, never spinning; a holder that dies frees the lease when it runs out, and a waiter takes over.

A lease is per refresh handle and client authentication: requests with other credentials (a stolen handle and
a guessed secret) could never share the answer, and must not hold up the client's own refresh either; they go
to the authorization server for its verdict, as they would without the lock. It is named by a SHA-256 digest
of both: one key, so one Redis Cluster slot, and no handle in clear in the store. Knows nothing of
mitmproxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field

from .errors import SplitTokenError, StoreUnavailable
from .seal import Record, store_key
from .vault import Vault

logger = logging.getLogger("splittoken")

# How long a lease lasts unless renewed: how long a refresh handle stays blocked after its holder died.
LEASE_SECONDS = 10.0
# Between two looks at the store of a proxy waiting for another proxy's refresh.
POLL_SECONDS = 0.05


class WaitedTooLong(SplitTokenError):
    """Another proxy's refresh of the handle was still under way when the wait ran out."""


@dataclass
class _Held:
    name: str
    owner: str
    released: asyncio.Event = field(default_factory=asyncio.Event)


class RefreshLock:
    def __init__(self, vault: Vault, ttl: float = LEASE_SECONDS, longest: float = 60.0) -> None:
        """``ttl``: a lease's life without renewal, in seconds; ``longest``: how long a flow waits for the
        lease, and how long a holder renews it at most (nobody waits longer for its answer)."""
        self.vault = vault
        self.ttl = ttl
        self.longest = longest
        self._held: dict[str, _Held] = {}  # by the id of the flow that holds it
        self._keepers: set[asyncio.Task[None]] = set()  # the event loop keeps only weak references

    async def take(self, flow_id: str, handle: str, client: str) -> Record | None:
        """Wait until the flow holds the lease of ``handle``, a refresh handle, for ``client`` (its client
        authentication), or until another proxy's refresh of it for that client is over. Returns the
        handle's record as it is then: kind "refresh" when the flow holds the lease and goes upstream
        (``release`` it when done); "rotated" (another proxy's answer to replay) or None (refused, revoked)
        when it holds none. Raises WaitedTooLong, and StoreUnavailable."""
        name = store_key(f"{handle}\n{client}")
        give_up = time.monotonic() + self.longest
        while True:
            owner = secrets.token_hex(16)  # per attempt: a previous attempt of the same flow holds nothing
            if await self.vault.lease(name, owner, self.ttl):
                held = _Held(name, owner)
                try:
                    # Read again: the previous holder may have stored its answer just before it let go.
                    current = await self.vault.find(handle)
                except StoreUnavailable:
                    await self._release_now(held)
                    raise
                if current is None or current.kind != "refresh":
                    await self._release_now(held)
                    return current
                keeper = asyncio.get_running_loop().create_task(self._keep(held))
                self._keepers.add(keeper)
                keeper.add_done_callback(self._keepers.discard)
                self._held[flow_id] = held
                return current
            if time.monotonic() >= give_up:
                raise WaitedTooLong
            await asyncio.sleep(POLL_SECONDS)
            record_now = await self.vault.find(handle)
            if record_now is None or record_now.kind != "refresh":
                return record_now

    def release(self, flow_id: str) -> None:
        """The flow's refresh is over (its answer stored, or none coming): its lease goes, soon after."""
        if held := self._held.pop(flow_id, None):
            held.released.set()

    async def _keep(self, held: _Held) -> None:
        """Renew every third of the ttl until released, then drop the lease. Bounded by ``longest``: a flow
        whose end this proxy never learns (a reconfiguration mid-refresh) frees its lease all the same."""
        stop_renewing = time.monotonic() + self.longest
        try:
            while time.monotonic() < stop_renewing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(held.released.wait(), self.ttl / 3)
                    return
                try:
                    if not await self.vault.lease(held.name, held.owner, self.ttl):
                        # Too slow to renew (a store that hung longer than the ttl): another proxy may be
                        # refreshing too, and the authorization server decides between the two.
                        logger.warning("refresh lease %s… lost while its refresh was upstream", held.name[:8])
                        return
                except StoreUnavailable as e:
                    logger.warning("cannot renew refresh lease %s…: %s", held.name[:8], e)
        finally:
            self._held = {k: v for k, v in self._held.items() if v is not held}
            await self._release_now(held)

    async def _release_now(self, held: _Held) -> None:
        try:
            await self.vault.release(held.name, held.owner)
        except StoreUnavailable as e:
            logger.warning("cannot release refresh lease %s… (it runs out by itself): %s", held.name[:8], e)
