"""A bounded cache of opened records, trusted only while the store tells it what changed.

A join of a cached handle needs no store read, no unsealing and no thread: one dictionary look-up. The cost
of that is the delay with which a revocation made elsewhere reaches this proxy, and the store bounds it: a
watcher thread follows the store's change feed (store.Changes) and evicts what any proxy deletes or
overwrites, and the cache answers only while the feed has confirmed, less than ``TRUSTED_SECONDS`` ago, that
it has reported every change up to then. A feed that falls silent (a store that hangs, a partition) makes the
cache answer nothing within that time; a feed that fails (connection reset, Redis down) empties it at once.
Either way the vault then reads the store, as without a cache: 503 while the store is down.

Knows nothing of mitmproxy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable

from .errors import StoreUnavailable
from .seal import Record
from .store import Changes

logger = logging.getLogger("splittoken")

# How often the feed confirms that it is up to date, and for how long such a confirmation is trusted: a
# revocation on another proxy stops cached joins here within TRUSTED_SECONDS whatever the feed does (usually
# within a millisecond or two: Redis pushes invalidations as the write happens). The margin over the interval
# absorbs a watcher thread that waits for the GIL of a busy proxy; a shorter trust would have the cache go
# dark under load.
CONFIRM_SECONDS = 0.02
TRUSTED_SECONDS = 0.075
# After the feed failed: how long before it is tried again (the cache stays empty and dark meanwhile).
RETRY_SECONDS = 0.25


class RecordCache:
    """Opened records by store key, at most ``size``, least recently used dropped first."""

    def __init__(self, size: int, changes: Changes) -> None:
        if size < 1:
            raise ValueError(f"a record cache holds at least one record, not {size}")
        self.size = size
        self._changes = changes
        self._records: OrderedDict[str, Record] = OrderedDict()
        self._lock = threading.Lock()
        # Bumped by every eviction: a record read from the store before one may be stale, so it is not kept
        # (see keep). Coarse on purpose: it costs a miss now and then, never a stale join.
        self.generation = 0
        self._confirmed = -float("inf")  # time.monotonic() up to which every change has been evicted
        # What get() answered: a record, nothing cached, nothing because the feed was not trusted then.
        self.hits = self.misses = self.untrusted = 0
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="splittoken-cache", daemon=True)
        self._watcher.start()

    def __repr__(self) -> str:
        return f"RecordCache({len(self._records)}/{self.size}, {'live' if self.live else 'dark'})"

    def __len__(self) -> int:
        return len(self._records)

    @property
    def live(self) -> bool:
        return time.monotonic() - self._confirmed < TRUSTED_SECONDS

    def get(self, key: str) -> Record | None:
        """The record cached under ``key``; None when there is none or the cache cannot be trusted now."""
        if time.monotonic() - self._confirmed >= TRUSTED_SECONDS or not self._changes.settled():
            self.untrusted += 1
            return None
        with self._lock:
            record = self._records.get(key)
            if record is None:
                self.misses += 1
                return None
            self.hits += 1
            self._records.move_to_end(key)
            return record

    def keep(self, key: str, record: Record, generation: int) -> None:
        """Cache a record read from the store when ``generation`` was current: dropped if anything was
        evicted since, because the eviction may have been of this very record, announced after the read."""
        with self._lock:
            if generation != self.generation:
                return
            self._records[key] = record
            self._records.move_to_end(key)
            if len(self._records) > self.size:
                self._records.popitem(last=False)

    def evict(self, keys: Iterable[str] | None) -> None:
        """Drop these records (None: all of them)."""
        with self._lock:
            self.generation += 1
            if keys is None:
                self._records.clear()
            else:
                for key in keys:
                    self._records.pop(key, None)

    def close(self) -> None:
        self._stopping.set()
        self._changes.close()  # wakes a watcher that waits on the feed
        self._watcher.join(timeout=1)

    def _watch(self) -> None:
        failed = False
        try:
            while not self._stopping.is_set():
                try:
                    confirmed, keys = self._changes.wait(CONFIRM_SECONDS)
                # Anything, not only StoreUnavailable: a dead watcher would leave the cache dark for good.
                except Exception as e:
                    # Dark before empty: a racing get() must not find a record that outlived the feed.
                    self._confirmed = -float("inf")
                    self.evict(None)
                    if self._stopping.is_set():
                        return
                    if not failed:
                        why = e if isinstance(e, StoreUnavailable) else f"{type(e).__name__}: {e}"
                        logger.warning("record cache off until the store's change feed is back: %s", why)
                    failed = True
                    self._stopping.wait(RETRY_SECONDS)
                    continue
                if keys is None or keys:
                    self.evict(keys)
                self._confirmed = confirmed
                if failed:
                    logger.info("record cache on again: the store's change feed is back")
                    failed = False
        finally:
            self._changes.close()  # a connection the feed opened while close() ran
