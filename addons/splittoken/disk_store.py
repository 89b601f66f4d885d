"""The default store: diskcache (SQLite + files) on a local directory, which several processes may share."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import diskcache

from .errors import StoreUnavailable
from .store import StoreStats, check_lease

_DISK_ERRORS = (sqlite3.Error, OSError, diskcache.Timeout)

# Records deleted or overwritten, for the record caches of every process on the directory (_DiskChanges): a
# table in the records' own database, filled by triggers on diskcache's own table (whose rows are the
# records: key, value, store_time), so that a change and its entry commit in one transaction whoever makes it
# (another proxy, the admin CLI), no crash can leave a change unannounced, and a new record (a split) costs
# nothing more. Expiry's deletions are logged too, harmlessly. Entries are dropped by purge() after
# CHANGE_LOG_SECONDS, far longer than a feed that is still trusted can lag behind.
_CHANGES_TABLE = "splittoken_changes"
CHANGE_LOG_SECONDS = 600
_NOW = "(julianday('now') - 2440587.5) * 86400.0"  # Unix time in SQLite before unixepoch('subsec') (3.42)
_CHANGE_LOG_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {_CHANGES_TABLE} "
    "(seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, at REAL NOT NULL)",
    f"CREATE TRIGGER IF NOT EXISTS {_CHANGES_TABLE}_update AFTER UPDATE OF value, store_time ON Cache "
    f"BEGIN INSERT INTO {_CHANGES_TABLE} (key, at) VALUES (old.key, {_NOW}); END",
    f"CREATE TRIGGER IF NOT EXISTS {_CHANGES_TABLE}_delete AFTER DELETE ON Cache "
    f"BEGIN INSERT INTO {_CHANGES_TABLE} (key, at) VALUES (old.key, {_NOW}); END",
)


class DiskStore:
    """diskcache (SQLite + files) on a local directory; several processes may share one directory.

    Leases live in a second cache in the ``leases`` subdirectory: apart from records, so that stats count
    records only and no record key can name a lease.
    """

    blocking = False

    def __init__(self, directory: str | Path, timeout: float = 1.0) -> None:
        self.directory = Path(directory)
        try:
            # Private from the start: records are sealed, but how many and when is nobody else's business.
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            # eviction_policy "none": a full cache must never silently drop live handles; only expiry removes.
            # timeout is SQLite's busy timeout: a store locked by another process must not hang a request.
            # No mmap and a 4 MiB page cache instead of diskcache's 64 MiB map and 32 MiB cache: with a large
            # store those grew the proxy by 50-100 MiB and gave lookups a 100 µs p99 (page faults). Reads
            # through the OS page cache are about as fast, and memory stays flat as the store grows.
            self._cache = diskcache.Cache(
                str(self.directory), timeout=timeout, eviction_policy="none", statistics=False,
                sqlite_mmap_size=0, sqlite_cache_size=1024,
            )  # fmt: skip
            self._leases = diskcache.Cache(
                str(self.directory / "leases"), timeout=timeout, eviction_policy="none", statistics=False,
                sqlite_mmap_size=0, sqlite_cache_size=64,
            )  # fmt: skip
            for statement in _CHANGE_LOG_SCHEMA:
                self._cache._sql(statement)
        except _DISK_ERRORS as e:
            raise StoreUnavailable(f"cannot open store directory {self.directory}: {e}") from None

    def __repr__(self) -> str:
        return f"DiskStore({str(self.directory)!r})"

    @contextlib.contextmanager
    def _calling(self, action: str) -> Iterator[None]:
        try:
            yield
        except _DISK_ERRORS as e:
            raise StoreUnavailable(f"store {action} failed: {type(e).__name__}: {e}") from None

    def put(self, key: str, value: bytes, expires_at: float) -> None:
        ttl = expires_at - time.time()
        if ttl <= 0:
            return
        with self._calling("write"):
            self._cache.set(key, value, expire=ttl, retry=False)

    def get(self, key: str) -> bytes | None:
        with self._calling("read"):
            value = self._cache.get(key, default=None, retry=False)
        return value if isinstance(value, bytes) else None

    def add(self, key: str, value: bytes, expires_at: float) -> bool:
        """Safe across processes: diskcache's add() reads and writes the row in one BEGIN IMMEDIATE
        transaction, which holds SQLite's write lock on the shared file, and counts an expired row as
        absent."""
        ttl = expires_at - time.time()
        if ttl <= 0:
            return False
        with self._calling("write"):
            return self._cache.add(key, value, expire=ttl, retry=False)

    def delete(self, key: str) -> bool:
        with self._calling("delete"):
            return bool(self._cache.delete(key, retry=False))

    def lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        """Safe across processes: transact() is BEGIN IMMEDIATE, SQLite's write lock on the shared file, so
        reading the holder and writing the new one cannot interleave with another process's. Expiry is this
        host's wall clock, which every process sharing the directory reads alike."""
        check_lease(owner, ttl_seconds)
        with self._calling("lease"), self._leases.transact(retry=False):
            holder = self._leases.get(name, default=None, retry=False)  # None once expired
            if holder is not None and holder != owner:
                return False
            self._leases.set(name, owner, expire=ttl_seconds, retry=False)
            return True

    def release(self, name: str, owner: str) -> bool:
        """Compare-and-delete in one transaction, as lease()."""
        with self._calling("release"), self._leases.transact(retry=False):
            if self._leases.get(name, default=None, retry=False) != owner:
                return False
            return bool(self._leases.delete(name, retry=False))

    def stats(self) -> StoreStats:
        with self._calling("stats"):
            # diskcache has no public count of expired rows; its own culling runs this same query.
            (expired,) = self._cache._sql(
                "SELECT COUNT(*) FROM Cache WHERE expire_time IS NOT NULL AND expire_time <= ?",
                (time.time(),),
            ).fetchone()
            return StoreStats(records=len(self._cache), expired=expired)

    def purge(self) -> int:
        """Expired records (counted in the answer) and leases (whose holders died) are dropped."""
        with self._calling("purge"):
            self._leases.expire(retry=False)
            horizon = time.time() - CHANGE_LOG_SECONDS
            self._cache._sql(f"DELETE FROM {_CHANGES_TABLE} WHERE at < ?", (horizon,))
            return self._cache.expire(retry=False)

    def changes(self) -> _DiskChanges:
        return _DiskChanges(self)

    def close(self) -> None:
        self._cache.close()
        self._leases.close()


class _DiskChanges:
    """Polls the change log: most of the time one indexed query that finds nothing (some 10 µs)."""

    def __init__(self, store: DiskStore) -> None:
        self._store = store
        self._seen: int | None = None  # seq of the last entry reported; None: not started, or failed
        self._closed = threading.Event()

    def wait(self, seconds: float) -> tuple[float, frozenset[str] | None]:
        if self._seen is not None and self._closed.wait(seconds):
            raise StoreUnavailable("change feed closed")
        # Before the query: its snapshot holds every change committed by now.
        confirmed = time.monotonic()
        sql = self._store._cache._sql
        try:
            with self._store._calling("change feed read"):
                if self._seen is None:
                    (self._seen,) = sql(f"SELECT COALESCE(MAX(seq), 0) FROM {_CHANGES_TABLE}").fetchone()
                    return confirmed, None
                rows = sql(
                    f"SELECT seq, key FROM {_CHANGES_TABLE} WHERE seq > ? ORDER BY seq", (self._seen,)
                ).fetchall()
        except StoreUnavailable:
            self._seen = None
            raise
        if not rows:
            return confirmed, frozenset()
        # Entries commit in seq order without gaps (one writer at a time holds SQLite's write lock), so a gap
        # means entries purged before this feed read them.
        missed = rows[0][0] != self._seen + 1
        self._seen = rows[-1][0]
        return confirmed, None if missed else frozenset(key for _, key in rows)

    def settled(self) -> bool:
        return True  # a change log, read only when polled: nothing arrives in between

    def close(self) -> None:
        self._closed.set()
