"""Where sealed records live: one small interface, a diskcache and a Redis implementation.

A store only ever sees opaque keys (SHA-256 of a handle) and sealed bytes; sealing is the vault's business.
Every failure to reach the data surfaces as StoreUnavailable, so the proxy can fail closed (503).
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import diskcache
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .errors import StoreUnavailable


@dataclass(frozen=True)
class StoreStats:
    records: int  # every record held, expired ones not yet purged included
    expired: int  # expired but not yet purged (a store that purges by itself always says 0)


class Store(Protocol):
    # True when calls wait on a network: the addon runs them off mitmproxy's event loop.
    blocking: bool

    def put(self, key: str, value: bytes, expires_at: float) -> None: ...

    def get(self, key: str) -> bytes | None: ...

    def delete(self, key: str) -> bool: ...

    def stats(self) -> StoreStats: ...

    def purge(self) -> int: ...

    def close(self) -> None: ...


_DISK_ERRORS = (sqlite3.Error, OSError, diskcache.Timeout)


class DiskStore:
    """diskcache (SQLite + files) on a local directory; several processes may share one directory."""

    blocking = False

    def __init__(self, directory: str | Path, timeout: float = 1.0) -> None:
        self.directory = Path(directory)
        try:
            # eviction_policy "none": a full cache must never silently drop live handles; only expiry removes.
            # timeout is SQLite's busy timeout: a store locked by another process must not hang a request.
            # No mmap and a 4 MiB page cache instead of diskcache's 64 MiB map and 32 MiB cache: with a large
            # store those grew the proxy by 50-100 MiB and gave lookups a 100 µs p99 (page faults). Reads
            # through the OS page cache are about as fast, and memory stays flat as the store grows.
            self._cache = diskcache.Cache(
                str(self.directory), timeout=timeout, eviction_policy="none", statistics=False,
                sqlite_mmap_size=0, sqlite_cache_size=1024,
            )  # fmt: skip
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

    def delete(self, key: str) -> bool:
        with self._calling("delete"):
            return bool(self._cache.delete(key, retry=False))

    def stats(self) -> StoreStats:
        with self._calling("stats"):
            # diskcache has no public count of expired rows; its own culling runs this same query.
            (expired,) = self._cache._sql(
                "SELECT COUNT(*) FROM Cache WHERE expire_time IS NOT NULL AND expire_time <= ?",
                (time.time(),),
            ).fetchone()
            return StoreStats(records=len(self._cache), expired=expired)

    def purge(self) -> int:
        with self._calling("purge"):
            return self._cache.expire(retry=False)

    def close(self) -> None:
        self._cache.close()


# AuthenticationError, BusyLoadingError, ResponseError, ... are all RedisError; OSError catches any socket or
# TLS failure that escapes redis-py's own wrapping.
_REDIS_ERRORS = (redis.RedisError, OSError)


def redact_redis_url(url: str) -> str:
    """The URL with any password (userinfo or ``?password=``) replaced by ***, safe to log.

    Works on the raw string rather than urlsplit, which mis-splits a password holding a raw / ? or #
    and would then leave part of it in clear.
    """
    url = re.sub(r"([?&]password=)[^&#]*", r"\1***", url)
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.partition(':')[0]}:***@{hostpart}"


def _check_redis_url(url: str, safe_url: str) -> None:
    """Refuse what redis-py would misread silently (no host means localhost, a bad db path means db 0)."""

    def invalid(why: str) -> ValueError:
        return ValueError(f"invalid Redis URL {safe_url}: {why}")

    try:
        parts = urlsplit(url)
        _ = parts.port  # the property raises for a port that is not a number in 0..65535
    except ValueError:
        # urllib's own message would quote the bad port, which may be a piece of a mis-encoded password.
        raise invalid("cannot read host and port (percent-encode / ? # in a password)") from None
    if parts.scheme == "unix":
        if not parts.path:
            raise invalid("unix:// needs a socket path")
        return
    if not parts.hostname:
        raise invalid("no host")
    db = unquote(parts.path).strip("/")
    if db and not db.isdigit():
        raise invalid(f"the path must be a database number, not {db!r}")


class RedisStore:
    """Redis (redis://, rediss:// for TLS, unix://) shared by any number of proxies; expires records itself.

    Keys live under ``splittoken:`` so the store can share a database with other users.
    The constructor never connects: the proxy starts while Redis is down, answers 503, and recovers on its
    own, because redis-py connects per command from its pool.
    """

    blocking = True
    PREFIX = "splittoken:"
    _SCAN_COUNT = 1000

    def __init__(self, url: str, timeout: float = 1.0) -> None:
        self._safe_url = redact_redis_url(url)
        self._timeout = timeout
        self._hung_until = 0.0  # time.monotonic() before which calls fail at once (see _calling)
        _check_redis_url(url, self._safe_url)
        try:
            self._redis = redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                # A PING before reusing a connection idle this long: one that a firewall or failover reset
                # while idle is replaced (the retry below) rather than failing the request that picks it up.
                health_check_interval=30,
                # One immediate retry on a refused or reset connection, e.g. a pooled socket that died with a
                # Redis restart. Timeouts are not retried: a hung Redis costs one timeout per call, not two.
                retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
            )
            # Connections are built lazily: build one now (no I/O) so that an unknown ?option fails at
            # start-up rather than as a TypeError on every request.
            pool = self._redis.connection_pool
            pool.connection_class(**pool.connection_kwargs)
        except (ValueError, TypeError) as e:
            raise ValueError(f"invalid Redis URL {self._safe_url}: {e}") from None
        self._password: str | None = self._redis.connection_pool.connection_kwargs.get("password")

    def __repr__(self) -> str:
        return f"RedisStore({self._safe_url!r})"

    @contextlib.contextmanager
    def _calling(self, action: str) -> Iterator[None]:
        """Turn Redis failures into StoreUnavailable. After a timeout, fail fast for one timeout's length:
        with Redis hung, requests would otherwise queue behind the few worker threads, each waiting out a
        whole timeout, and answer their 503 long after the configured timeout."""
        if time.monotonic() < self._hung_until:
            raise StoreUnavailable(f"redis {action} skipped ({self._safe_url}): it timed out moments ago")
        try:
            yield
        except _REDIS_ERRORS as e:
            if isinstance(e, redis.TimeoutError | TimeoutError):
                self._hung_until = time.monotonic() + self._timeout
            raise self._unavailable(action, e) from None

    def _unavailable(self, action: str, e: Exception) -> StoreUnavailable:
        message = f"redis {action} failed ({self._safe_url}): {type(e).__name__}: {e}"
        # redis-py's messages name host and port only; scrub anyway so no future wording can leak the secret.
        if self._password:
            message = message.replace(self._password, "***")
        return StoreUnavailable(message)

    def put(self, key: str, value: bytes, expires_at: float) -> None:
        # Relative (PX), not absolute (PXAT): the lifetime is measured on this proxy's clock, so a Redis host
        # whose clock runs ahead cannot expire records early.
        ttl_ms = int((expires_at - time.time()) * 1000)
        if ttl_ms <= 0:
            return
        with self._calling("write"):
            self._redis.set(self.PREFIX + key, value, px=ttl_ms)

    def get(self, key: str) -> bytes | None:
        with self._calling("read"):
            return self._redis.get(self.PREFIX + key)

    def delete(self, key: str) -> bool:
        with self._calling("delete"):
            return self._redis.delete(self.PREFIX + key) == 1

    def stats(self) -> StoreStats:
        with self._calling("stats"):
            # SCAN, not KEYS, so a large database is never blocked; a key may be counted twice while Redis
            # rehashes, which a statistic can afford.
            records = sum(1 for _ in self._redis.scan_iter(match=self.PREFIX + "*", count=self._SCAN_COUNT))
        # Redis deletes expired keys itself (lazily on access and by its active expiry cycle) and never
        # returns them, so there is never an expired record to report.
        return StoreStats(records=records, expired=0)

    def purge(self) -> int:
        return 0  # Redis purges expired keys itself: see stats()

    def close(self) -> None:
        self._redis.close()


def open_store(spec: str, *, timeout: float = 1.0) -> Store:
    """A store from the ``splittoken_store`` option: a directory, or a redis:// / rediss:// URL."""
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(spec, timeout=timeout)
    return DiskStore(spec, timeout=timeout)
