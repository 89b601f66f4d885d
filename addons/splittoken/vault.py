"""The vault: handles in, sealed records out. The one way to the store.

It owns the store, the clock and the leeway, and decides how a store call leaves the event loop: a store that
waits on a network (Redis) is called on threads of its own, so that a slow store cannot starve anything else
in the default executor; a local one (diskcache) is called in place. The ``*_now`` forms are the same calls,
blocking, for the admin CLI and for mitmproxy commands (which cannot be coroutines); each is bounded by the
store's timeout. Knows nothing of mitmproxy.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from .errors import SealBroken
from .seal import Record, open_sealed, seal, store_key
from .store import Store, StoreStats

# 256 bits from the OS CSPRNG, base64url: as hard to guess as any JWS signature handle.
REFRESH_HANDLE_BYTES = 32
# Concurrent calls to a networked store in flight at once; more wait for a thread.
STORE_THREADS = 32

T = TypeVar("T")


def new_refresh_handle() -> str:
    return secrets.token_urlsafe(REFRESH_HANDLE_BYTES)


class Vault:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time, leeway: float = 0) -> None:
        self.store = store
        self.clock = clock
        self.leeway = leeway
        self._threads = (
            ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="splittoken-store")
            if store.blocking
            else None
        )

    def __repr__(self) -> str:
        return f"Vault({self.store!r})"

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        if self._threads is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    # Each raises StoreUnavailable.
    async def keep(self, handle: str, record: Record) -> None:
        """Store a record under a handle, for as long as the record lives."""
        await self._call(self.keep_now, handle, record)

    async def find(self, handle: str) -> Record | None:
        """The live record for a handle, or None (unknown, expired, or not sealed under this handle)."""
        return await self._call(self.find_now, handle)

    async def forget(self, handle: str) -> bool:
        return await self._call(self.forget_now, handle)

    async def purge(self) -> int:
        # Bulk work: off the event loop whatever the store, even diskcache.
        return await asyncio.to_thread(self.purge_now)

    def keep_now(self, handle: str, record: Record) -> None:
        self.store.put(store_key(handle), seal(handle, record), record.expires_at + self.leeway)

    def find_now(self, handle: str) -> Record | None:
        # Expired records are refused here even when the store has not purged them yet.
        sealed = self.store.get(store_key(handle))
        if sealed is None:
            return None
        try:
            record = open_sealed(handle, sealed)
        except SealBroken:
            return None
        if record.expired(self.clock(), self.leeway):
            return None
        return record

    def forget_now(self, handle: str) -> bool:
        return self.store.delete(store_key(handle))

    def stats_now(self) -> StoreStats:
        return self.store.stats()

    def purge_now(self) -> int:
        return self.store.purge()

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        self.store.close()


def describe(stats: StoreStats) -> str:
    """One line for administrators: counts only, never a handle or a claim."""
    return f"records={stats.records} expired={stats.expired}"
