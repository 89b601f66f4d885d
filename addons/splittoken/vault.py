"""The vault: handles in, sealed records out. The one way to the store.

It owns the store, the clock and the leeway, and decides how a store call leaves the event loop: a store that
waits on a network (Redis) is called on threads of its own, so that a slow store cannot starve anything else
in the default executor; a local one (diskcache) is called in place. The ``*_now`` forms are the same calls,
blocking, for the admin CLI and for mitmproxy commands (which cannot be coroutines); each is bounded by the
store's timeout.

With ``cache_size``, opened access records are also kept in a RecordCache (cache.py), which the store keeps
honest: a join of a cached handle reads no store, unseals nothing and leaves the event loop for nothing. Only
access records: refresh handles are read from the store every time, because rotation is a read-modify-write
that must see what the other proxies did. Expiry is judged on every find, cached or not. Knows nothing of
mitmproxy.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from .cache import RecordCache
from .errors import SealBroken, StoreUnavailable
from .seal import Record, open_sealed, seal, store_key
from .store import Store, StoreStats

# 256 bits from the OS CSPRNG, base64url: as hard to guess as any JWS signature handle.
REFRESH_HANDLE_BYTES = 32
# Concurrent calls to a networked store in flight at once; more wait for a thread.
STORE_THREADS = 32

T = TypeVar("T")

logger = logging.getLogger("splittoken")


def new_refresh_handle() -> str:
    return secrets.token_urlsafe(REFRESH_HANDLE_BYTES)


class Vault:
    def __init__(
        self, store: Store, clock: Callable[[], float] = time.time, leeway: float = 0, cache_size: int = 0
    ) -> None:
        """``cache_size``: opened records kept in memory (0: none). A store that cannot tell which records
        change (store.changes() is None) gets no cache, whatever the size."""
        self.store = store
        self.clock = clock
        self.leeway = leeway
        self._threads = (
            ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="splittoken-store")
            if store.blocking
            else None
        )
        self._closed = False
        changes = store.changes() if cache_size > 0 else None
        self.cache = RecordCache(cache_size, changes) if changes is not None else None

    def __repr__(self) -> str:
        return f"Vault({self.store!r}, cache={self.cache!r})"

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        if self._closed:
            # A reconfiguration replaced this vault while work that holds it (a lease being renewed) ran on.
            raise StoreUnavailable("the store was closed by a reconfiguration")
        if self._threads is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    # Each raises StoreUnavailable.
    async def keep(self, handle: str, record: Record) -> None:
        """Store a record under a handle, for as long as the record lives."""
        await self._call(self.keep_now, handle, record)

    async def find(self, handle: str) -> Record | None:
        """The live record for a handle, or None (unknown, expired, or not sealed under this handle)."""
        key = store_key(handle)
        record = self.cache.get(key) if self.cache is not None else None
        if record is None:
            record = await self._call(self._read, handle, key)
        return self._live(record)

    async def forget(self, handle: str) -> bool:
        return await self._call(self.forget_now, handle)

    # Plain entries beside the sealed records (DPoP proof ids, server nonces), for what proxies on one store
    # must agree on that is no secret; their keys are digests in a domain of their own, never a handle's.
    async def add(self, key: str, value: bytes, expires_at: float) -> bool:
        """Store ``value`` unless the key is there already: True for the one caller that stored it."""
        return await self._call(self.store.add, key, value, expires_at)

    async def get(self, key: str) -> bytes | None:
        return await self._call(self.store.get, key)

    async def lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        """Take or renew a lease (Store.lease): how proxies on one store agree who does a piece of work."""
        return await self._call(self.store.lease, name, owner, ttl_seconds)

    async def release(self, name: str, owner: str) -> bool:
        return await self._call(self.store.release, name, owner)

    async def purge(self) -> int:
        # Bulk work: off the event loop whatever the store, even diskcache.
        return await asyncio.to_thread(self.purge_now)

    async def purge_logged(self) -> None:
        """A purge whose outcome is logged, not raised: the periodic one."""
        try:
            purged = await self.purge()
        except StoreUnavailable as e:
            logger.warning("periodic purge failed: %s", e)
        else:
            if purged:
                logger.info("purged %d expired record(s)", purged)

    def keep_now(self, handle: str, record: Record) -> None:
        key = store_key(handle)
        try:
            self.store.put(key, seal(handle, record), record.expires_at + self.leeway)
        finally:
            self._evict(key)

    def find_now(self, handle: str) -> Record | None:
        key = store_key(handle)
        record = self.cache.get(key) if self.cache is not None else None
        return self._live(record or self._read(handle, key))

    def forget_now(self, handle: str) -> bool:
        key = store_key(handle)
        try:
            return self.store.delete(key)
        finally:
            # Here at once, not when the store's feed tells: the revoking client's next request may come
            # first. Also when the delete failed: the store is asked again, rather than the cache trusted.
            self._evict(key)

    def _read(self, handle: str, key: str) -> Record | None:
        generation = self.cache.generation if self.cache is not None else 0
        sealed = self.store.get(key)
        if sealed is None:
            return None
        try:
            record = open_sealed(handle, sealed)
        except SealBroken:
            return None
        if self.cache is not None and record.kind == "access" and self._live(record):
            self.cache.keep(key, record, generation)
        return record

    def _live(self, record: Record | None) -> Record | None:
        # Expired records are refused here even when the store has not purged them yet, cached or not.
        if record is None or record.expired(self.clock(), self.leeway):
            return None
        return record

    def _evict(self, key: str) -> None:
        if self.cache is not None:
            self.cache.evict((key,))

    def stats_now(self) -> StoreStats:
        return self.store.stats()

    def purge_now(self) -> int:
        return self.store.purge()

    def close(self) -> None:
        self._closed = True
        if self.cache is not None:
            self.cache.close()
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        self.store.close()


def describe(stats: StoreStats) -> str:
    """One line for administrators: counts only, never a handle or a claim."""
    return f"records={stats.records} expired={stats.expired}"
