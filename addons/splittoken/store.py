"""Where sealed records live: one small interface, a diskcache and a Redis implementation.

A store only ever sees opaque keys (SHA-256 of a handle) and sealed bytes; sealing is the vault's business.
Besides records it keeps leases: short locks by which several proxies agree which of them does a piece of
work (one refresh of one refresh handle), in a keyspace of their own so that no record key can name one.
Every failure to reach the data surfaces as StoreUnavailable, so the proxy can fail closed (503).
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import diskcache
import redis
from redis._parsers import _RESP3Parser
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

from .errors import StoreUnavailable


class Changes(Protocol):
    """A store's account of which records changed, for a cache of opened records (cache.RecordCache): every
    record key that any client of the store deleted or overwrote. Called from one thread."""

    def wait(self, seconds: float) -> tuple[float, frozenset[str] | None]:
        """Wait up to about ``seconds`` for news, then answer ``(confirmed, keys)``: the keys changed since
        the previous call (None: possibly any, as after connecting), and a time.monotonic() reading such that
        every change made before it is among the keys reported so far. Returns early when a change arrives.
        Raises StoreUnavailable when the feed is lost: changes may have gone unreported."""
        ...

    def close(self) -> None:
        """Stop: a wait() in progress on another thread returns or raises soon after."""
        ...


@dataclass(frozen=True)
class StoreStats:
    records: int  # every record held, expired ones not yet purged included
    expired: int  # expired but not yet purged (a store that purges by itself always says 0)


class Store(Protocol):
    # True when calls wait on a network: the addon runs them off mitmproxy's event loop.
    blocking: bool

    def put(self, key: str, value: bytes, expires_at: float) -> None: ...

    def get(self, key: str) -> bytes | None: ...

    def add(self, key: str, value: bytes, expires_at: float) -> bool:
        """put() only if no live record holds ``key``, atomically: True when this call stored it. An
        ``expires_at`` already past stores nothing and answers False. For records that must be made once
        (a DPoP ``jti`` seen), where the loser of a race must learn that it lost."""
        ...

    def delete(self, key: str) -> bool: ...

    def lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        """Take the lease ``name`` for ``owner`` for ``ttl_seconds``, or renew it when ``owner`` holds it
        already. False while another owner holds it unexpired. A holder that dies frees it when the ttl runs
        out; one that keeps working renews it well within the ttl and stops when a renewal answers False (it
        was too slow and someone else holds the lease now). ``owner`` must be unique per attempt, e.g.
        ``secrets.token_hex(16)``: two attempts that share an owner share the lease."""
        ...

    def release(self, name: str, owner: str) -> bool:
        """Drop the lease ``name`` if ``owner`` holds it: True when it did. A holder whose lease ran out and
        was taken over cannot drop its successor's."""
        ...

    def stats(self) -> StoreStats: ...

    def purge(self) -> int: ...

    def changes(self) -> Changes | None:
        """A new feed of changed records; None when this store cannot tell reliably (no cache then)."""
        ...

    def close(self) -> None: ...


def _check_lease(owner: str, ttl_seconds: float) -> None:
    if not owner:
        raise ValueError("a lease needs an owner")
    if not ttl_seconds > 0:
        raise ValueError(f"a lease needs a positive ttl, not {ttl_seconds}")


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
        _check_lease(owner, ttl_seconds)
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

    def close(self) -> None:
        self._closed.set()


# AuthenticationError, BusyLoadingError, ResponseError, ... are all RedisError; OSError catches any socket or
# TLS failure that escapes redis-py's own wrapping. RedisClusterException (no master reachable at start-up, a
# slot no master serves) is not a RedisError.
_REDIS_ERRORS = (redis.RedisError, redis.RedisClusterException, OSError)

# A Sentinel master's client is a plain redis.Redis; its pool asks the sentinels where the master is.
type _Client = redis.Redis | RedisCluster

_SINGLE_SCHEMES = ("redis", "rediss", "unix")
_SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
_CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
_DEFAULT_PORTS = {"sentinel": 26379, "cluster": 6379}

# How long the automatic replica count (see RedisStore) is trusted before the master is asked again.
_REPLICAS_RECHECK_SECONDS = 5.0

# Take or renew: the holder is read and written in one script, which Redis runs with nothing interleaved.
_LEASE_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# Compare-and-delete, atomic for the same reason.
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


# Not urllib's own message, which would quote the bad port: it may be a piece of a mis-encoded password.
_UNREADABLE_HOST = "cannot read host and port (percent-encode / ? # in a password)"


def redact_redis_url(url: str) -> str:
    """The URL with any password (userinfo or ``?password=``) replaced by ***, safe to log.

    Works on the raw string rather than urlsplit, which mis-splits a password holding a raw / ? or #
    and would then leave part of it in clear. Several hosts (Sentinel, Cluster) share the one userinfo.
    """
    url = re.sub(r"([?&]password=)[^&#]*", r"\1***", url)
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.partition(':')[0]}:***@{hostpart}"


def _check_redis_url(url: str, invalid: Callable[[str], ValueError]) -> None:
    """Refuse what redis-py would misread silently (no host means localhost, a bad db path means db 0)."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # the property raises for a port that is not a number in 0..65535
    except ValueError:
        raise invalid(_UNREADABLE_HOST) from None
    if parts.scheme == "unix":
        if not parts.path:
            raise invalid("unix:// needs a socket path")
        return
    if not parts.hostname:
        raise invalid("no host")
    db = unquote(parts.path).strip("/")
    if db and not db.isdigit():
        raise invalid(f"the path must be a database number, not {db!r}")


def _multi_host_options(
    url: str, kind: str, invalid: Callable[[str], ValueError]
) -> tuple[list[tuple[str, int]], str, dict[str, Any]]:
    """Hosts, the Sentinel service name ('' for a cluster) and redis-py connection options of a
    ``redis[s]+sentinel://`` or ``redis[s]+cluster://`` URL.

    The query, password and database go through redis-py's own URL parser, so the options are exactly those
    a ``redis://`` URL takes.
    """
    parts = urlsplit(url)
    if parts.fragment:
        raise invalid("a '#' (percent-encode it in a password)")
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    nodes = []
    for item in hostlist.split(","):
        try:
            node = urlsplit("//" + item)
            host, port = node.hostname, node.port
        except ValueError:
            raise invalid(_UNREADABLE_HOST) from None
        if not host:
            raise invalid("a host is missing (host:port[,host:port…])")
        nodes.append((host, port or _DEFAULT_PORTS[kind]))
    path = unquote(parts.path)
    if kind == "sentinel":
        service, _, db = path.removeprefix("/").partition("/")
        db = db.removesuffix("/")
        if not service:
            raise invalid("no service name (redis+sentinel://host:port[,host:port…]/<service-name>[/<db>])")
        if db and not db.isdigit():
            raise invalid(f"the path after the service name must be a database number, not {db!r}")
    else:
        service, db = "", ""
        if path.strip("/"):
            raise invalid("a path: Redis Cluster has one database and the URL names none")
    base = "rediss" if parts.scheme.startswith("rediss") else "redis"
    query = f"?{parts.query}" if parts.query else ""
    try:
        options = redis.connection.parse_url(f"{base}://{userinfo}{at}{hostlist.split(',')[0]}/{db}{query}")
    except ValueError as e:
        raise invalid(str(e)) from None
    del options["host"]
    options.pop("port", None)
    options.pop("connection_class", None)  # both Sentinel and Cluster choose their own class from ssl
    options["ssl"] = base == "rediss"
    if kind == "cluster" and options.pop("db", 0) != 0:
        raise invalid("Redis Cluster has only database 0")
    return nodes, service, options


class _SentinelConnection(SentinelManagedConnection):
    """A connection to the master that is closed when a read fails, as every other redis-py connection is.

    redis-py 8.1's Sentinel connection alone keeps its socket after a read timeout (its read_response
    defaults to disconnect_on_error=False): the pool then hands the same socket out again, so calls keep
    waiting on a frozen master long after the sentinels promoted a replica (never following it), and the
    late reply to a timed-out command could be read as the answer to the next one.
    """

    def read_response(self, *args: Any, disconnect_on_error: bool = True, **kwargs: Any) -> Any:
        return super().read_response(*args, disconnect_on_error=disconnect_on_error, **kwargs)


class _SentinelTLSConnection(_SentinelConnection, redis.SSLConnection):
    pass


def _check_options(options: dict[str, Any]) -> None:
    """Build a connection (no I/O) so that an unknown ?option fails at start-up, not on every request."""
    plain = {k: v for k, v in options.items() if k != "ssl"}
    (redis.SSLConnection if options["ssl"] else redis.Connection)(**plain)


class RedisStore:
    """Redis, shared by any number of proxies; expires records itself.

    - ``redis://``, ``rediss://`` (TLS), ``unix://``: one server.
    - ``redis+sentinel://[:password@]host:port[,host:port…]/<service-name>[/<db>]`` (``rediss+…`` for TLS
      to the sentinels and the servers): every call goes to the master the sentinels name, reads included,
      since a replica that has not yet received a fresh write would call a valid handle unknown. When the
      master dies, calls fail (StoreUnavailable) until the sentinels have promoted a replica, then reach it:
      redis-py asks the sentinels again on every new connection, and a demoted master's READONLY answer drops
      the connection. The password is the servers'; sentinels are asked without one.
    - ``redis+cluster://[:password@]host:port[,host:port…]``: any masters of one Redis Cluster as
      startup nodes. Keys spread over the slots by their whole name (a SHA-256 digest already), and every
      operation here touches exactly one key (the lease scripts too), so none can ever span slots and no hash
      tag is needed. A master that is down makes the calls for its slots fail, and only those, provided the
      servers run with ``cluster-require-full-coverage no``.

    Records live under ``splittoken:``, leases under ``splittoken-lease:``, so the store can share a database
    with other users and no record key can name a lease.

    ``min_replicas``: replicas that must have acknowledged a write (WAIT, on the same connection) before
    the call returns; fewer within half the timeout make it raise StoreUnavailable, although the master may
    keep the write: fail closed, the client gets a 503 rather than a handle that a failover could lose.
    None (the default) means 1 when the master reports a replica online, else 0; the answer is reused for
    a few seconds and asked again after a WAIT came up short. Not for Redis Cluster, whose writes are not
    waited for.

    The constructor never connects: the proxy starts while Redis is down, answers 503, and recovers on its
    own, because redis-py connects per command from its pool (a cluster client is made on first use: redis-py
    reads the slot map as it makes one).
    """

    blocking = True
    PREFIX = "splittoken:"
    LEASE_PREFIX = "splittoken-lease:"
    _SCAN_COUNT = 1000

    def __init__(self, url: str, timeout: float = 1.0, *, min_replicas: int | None = None) -> None:
        self._safe_url = redact_redis_url(url)
        self._timeout = timeout
        # time.monotonic() before which calls fail at once (see _calling), per cluster node; "" is everything
        # else: the one server, the Sentinel master, making the cluster client.
        self._hung_until: dict[str, float] = {}
        self._wait_ms = max(1, int(timeout * 500))
        self._auto_replicas = 0
        self._replicas_checked_until = 0.0  # time.monotonic() when the automatic count is asked again
        self._sentinel: Sentinel | None = None
        self._cluster_options: dict[str, Any] | None = None  # the cluster client, made on first use
        self._making = threading.Lock()

        def invalid(why: str) -> ValueError:
            return ValueError(f"invalid Redis URL {self._safe_url}: {why}")

        scheme = url.partition("://")[0]
        kind = scheme.partition("+")[2] if scheme in (*_SENTINEL_SCHEMES, *_CLUSTER_SCHEMES) else ""
        if min_replicas is not None and min_replicas < 0:
            raise ValueError(f"min_replicas must be 0 or more, not {min_replicas}")
        if kind == "cluster" and min_replicas:
            raise ValueError("min_replicas: Redis Cluster writes are not waited for")
        self._min_replicas = 0 if kind == "cluster" else min_replicas
        if kind:
            nodes, service, options = _multi_host_options(url, kind, invalid)
        elif scheme in _SINGLE_SCHEMES:
            _check_redis_url(url, invalid)
        else:
            raise invalid(f"unknown scheme {scheme}://")
        # One immediate retry on a refused or reset connection, e.g. a pooled socket that died with a Redis
        # restart. Timeouts are not retried: a hung Redis costs one timeout per call, not two.
        retry = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
        sockets = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        # A PING before reusing a connection idle this long: one that a firewall or failover reset while
        # idle is replaced (the retry) rather than failing the request that picks it up.
        health = {"health_check_interval": 30}
        self._redis: _Client | None = None
        try:
            if kind == "sentinel":
                _check_options(options)
                tls = {k: v for k, v in options.items() if k.startswith("ssl")}
                # No retry when asking a sentinel: the next sentinel is the retry.
                once = Retry(NoBackoff(), 0)
                self._sentinel = Sentinel(
                    nodes, sentinel_kwargs={**sockets, **tls, "retry": once},
                    **{**sockets, **health, **options}, retry=retry,
                )  # fmt: skip
                connection_class = _SentinelTLSConnection if options["ssl"] else _SentinelConnection
                self._redis = self._sentinel.master_for(service, connection_class=connection_class)
            elif kind == "cluster":
                _check_options(options)
                self._cluster_options = {
                    "startup_nodes": [ClusterNode(host, port) for host, port in nodes],
                    # Slots of a dead master are simply not served; the others still are.
                    "require_full_coverage": False,
                    "retry": retry,
                    **sockets,
                    **options,
                }
            else:
                self._redis = redis.Redis.from_url(url, **sockets, **health, retry=retry)
                pool = self._redis.connection_pool
                # Connections are built lazily: build one now (no I/O) so that an unknown ?option fails at
                # start-up rather than as a TypeError on every request.
                pool.connection_class(**pool.connection_kwargs)
                options = pool.connection_kwargs
        except (ValueError, TypeError) as e:
            raise invalid(str(e)) from None
        self._password: str | None = options.get("password")

    def __repr__(self) -> str:
        return f"RedisStore({self._safe_url!r})"

    def _client(self) -> _Client:
        client = self._redis
        if client is not None:
            return client
        with self._making:
            if self._redis is None:
                assert self._cluster_options is not None
                self._redis = RedisCluster(**self._cluster_options)
            return self._redis

    @contextlib.contextmanager
    def _calling(self, action: str, redis_key: str | None = None) -> Iterator[_Client]:
        """Turn Redis failures into StoreUnavailable. After a failure that took a timeout or more (a hung
        server; every sentinel or startup node tried in turn), fail fast for one timeout's length: requests
        would otherwise queue behind the few worker threads, each waiting out a whole timeout, and answer
        their 503 long after the configured timeout. In a cluster this holds per master, so that one hung
        master does not fail the calls that the others serve."""
        scope = ""
        started = time.monotonic()
        try:
            # Until the cluster client is made, the whole store is one scope: making it reads the slot map.
            if self._redis is None and started < self._hung_until.get(scope, 0.0):
                raise self._skipped(action)
            client = self._client()
            if redis_key is not None and isinstance(client, RedisCluster):
                scope = client.get_node_from_key(redis_key).name
            if started < self._hung_until.get(scope, 0.0):
                raise self._skipped(action)
            yield client
        except _REDIS_ERRORS as e:
            failed = time.monotonic()
            if isinstance(e, redis.TimeoutError | TimeoutError) or failed - started >= self._timeout:
                self._hung_until[scope] = failed + self._timeout
            raise self._unavailable(action, e) from None

    def _skipped(self, action: str) -> StoreUnavailable:
        return StoreUnavailable(f"redis {action} skipped ({self._safe_url}): it timed out moments ago")

    def _unavailable(self, action: str, e: Exception) -> StoreUnavailable:
        message = f"redis {action} failed ({self._safe_url}): {type(e).__name__}: {e}"
        # redis-py's messages name host and port only; scrub anyway so no future wording can leak the secret.
        if self._password:
            message = message.replace(self._password, "***")
        return StoreUnavailable(message)

    def _replicas_wanted(self, client: _Client) -> int:
        if self._min_replicas is not None:
            return self._min_replicas
        now = time.monotonic()
        if now >= self._replicas_checked_until:
            # "Online" only: a replica still loading its first copy would not acknowledge anything yet.
            replication = client.info("replication")
            self._auto_replicas = int(
                any(
                    isinstance(replica, dict) and replica.get("state") == "online"
                    for field, replica in replication.items()
                    if field.startswith("slave")
                )
            )
            self._replicas_checked_until = now + _REPLICAS_RECHECK_SECONDS
        return self._auto_replicas

    def _write(self, action: str, redis_key: str, command: Callable[[_Client], Any]) -> Any:
        """``command`` on the key's server; with replicas wanted, then WAIT on the same connection (WAIT
        counts the replicas that have every write this connection made)."""
        with self._calling(action, redis_key) as client:
            wanted = self._replicas_wanted(client)
            if not wanted:
                return command(client)
            pipe = client.pipeline(transaction=False)
            command(pipe)
            pipe.wait(wanted, self._wait_ms)
            result, acknowledged = pipe.execute()
        if acknowledged < wanted:
            self._replicas_checked_until = 0.0  # the replica may be gone for good: the automatic count asks
            raise StoreUnavailable(
                f"redis {action} reached {acknowledged} of {wanted} replica(s) within {self._wait_ms} ms "
                f"({self._safe_url})"
            )
        return result

    def put(self, key: str, value: bytes, expires_at: float) -> None:
        # Relative (PX), not absolute (PXAT): the lifetime is measured on this proxy's clock, so a Redis host
        # whose clock runs ahead cannot expire records early.
        ttl_ms = int((expires_at - time.time()) * 1000)
        if ttl_ms <= 0:
            return
        name = self.PREFIX + key
        self._write("write", name, lambda client: client.set(name, value, px=ttl_ms))

    def get(self, key: str) -> bytes | None:
        name = self.PREFIX + key
        with self._calling("read", name) as client:
            return client.get(name)

    def add(self, key: str, value: bytes, expires_at: float) -> bool:
        """SET NX: Redis checks and sets in one command, and an expired key is absent to it."""
        ttl_ms = int((expires_at - time.time()) * 1000)
        if ttl_ms <= 0:
            return False
        name = self.PREFIX + key
        return bool(self._write("write", name, lambda client: client.set(name, value, px=ttl_ms, nx=True)))

    def delete(self, key: str) -> bool:
        # Waited for like any write: a revocation that a failover undid would bring the handle back.
        name = self.PREFIX + key
        return self._write("delete", name, lambda client: client.delete(name)) == 1

    def lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        """One Lua script (read the holder, then SET PX for a free lease or its own holder), so no other
        command runs between the check and the write. The ttl is counted by Redis from the last renewal,
        so the proxies' clocks do not matter, and a lease written is waited for like a record (min_replicas):
        a failover does not hand a held lease to a second proxy."""
        _check_lease(owner, ttl_seconds)
        ttl_ms = max(1, round(ttl_seconds * 1000))
        lease_key = self.LEASE_PREFIX + name
        taken = self._write(
            "lease", lease_key, lambda client: client.eval(_LEASE_SCRIPT, 1, lease_key, owner, ttl_ms)
        )
        return taken == 1

    def release(self, name: str, owner: str) -> bool:
        """Compare-and-delete in one Lua script, atomic as lease()."""
        lease_key = self.LEASE_PREFIX + name
        released = self._write(
            "release", lease_key, lambda client: client.eval(_RELEASE_SCRIPT, 1, lease_key, owner)
        )
        return released == 1

    def stats(self) -> StoreStats:
        with self._calling("stats") as client:
            # SCAN, not KEYS, so a large database is never blocked; a key may be counted twice while Redis
            # rehashes, which a statistic can afford. A cluster client scans every master.
            records = sum(1 for _ in client.scan_iter(match=self.PREFIX + "*", count=self._SCAN_COUNT))
        # Redis deletes expired keys itself (lazily on access and by its active expiry cycle) and never
        # returns them, so there is never an expired record to report.
        return StoreStats(records=records, expired=0)

    def purge(self) -> int:
        return 0  # Redis purges expired keys itself: see stats()

    def changes(self) -> _RedisChanges | None:
        """One server only. Behind Sentinel, the feed's connection may stay on a demoted master after a
        failover, which still answers PING but no longer hears the writes; in a Cluster each master announces
        its own slots only, and slots move. Rather than a feed that could miss a revocation, none: proxies on
        those stores cache nothing."""
        if self._sentinel is not None or self._cluster_options is not None:
            return None
        assert isinstance(self._redis, redis.Redis)
        pool = self._redis.connection_pool
        # The data connections' settings (address, TLS, password, timeouts), but RESP3 for push messages, with
        # redis-py's own parser for them (hiredis' handles pushes otherwise), and no retry or health check of
        # its own: the feed reconnects, and its PINGs are the health check.
        settings = {
            **pool.connection_kwargs, "protocol": 3, "parser_class": _RESP3Parser,
            "retry": Retry(NoBackoff(), 0), "health_check_interval": 0,
        }  # fmt: skip
        return _RedisChanges(lambda: pool.connection_class(**settings), self._unavailable)

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
        if self._sentinel is not None:
            self._sentinel.close()


class _RedisChanges:
    """Redis client-side caching's invalidation messages, on a connection of its own: CLIENT TRACKING in
    broadcast mode (BCAST, RESP3) makes Redis push the name of every ``splittoken:`` key that anyone writes,
    deletes, expires or evicts, as it happens, and ``["invalidate", null]`` for a flushed database. The
    confirmation is a PING: Redis answers it on the same connection after every push it owed before it, so
    once the PONG is read every change made before the PING was sent has been reported.

    Not redis-py's own client-side cache (``cache_config``): it caches replies (still sealed: unsealing stays
    on every join), reads pushes only when a command is sent (on the store's threads, so no join without a
    thread hop), and never notices a server that went silent. It also needs Redis 7.4; tracking, 6.0.
    """

    def __init__(
        self,
        connect: Callable[[], redis.Connection],
        unavailable: Callable[[str, Exception], StoreUnavailable],
    ) -> None:
        self._connect = connect
        self._unavailable = unavailable
        self._connection: redis.Connection | None = None
        self._changed: set[str] | None = set()  # None: possibly any
        self._confirmed = -float("inf")
        self._ping_at = 0.0  # time.monotonic() of the next confirmation
        self._closed = False

    def wait(self, seconds: float) -> tuple[float, frozenset[str] | None]:
        try:
            connection = self._connection or self._track()
            now = time.monotonic()
            if now < self._ping_at and connection.can_read(self._ping_at - now):
                connection.read_response(push_request=True)  # a push, reported by _pushed
            else:
                sent = time.monotonic()
                connection.send_command("PING")
                connection.read_response()  # pushes that came first were reported on the way
                self._confirmed, self._ping_at = sent, sent + seconds
        except _REDIS_ERRORS as e:
            self._drop()
            raise self._unavailable("change feed", e) from None
        changed, self._changed = self._changed, set()
        return self._confirmed, None if changed is None else frozenset(changed)

    def _track(self) -> redis.Connection:
        if self._closed:
            raise redis.ConnectionError("change feed closed")
        connection = self._connect()
        self._connection = connection
        connection.connect()
        connection.send_command("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", RedisStore.PREFIX)
        connection.read_response()  # OK, or raises (a Redis before 6.0, an ACL without CLIENT)
        connection._parser.set_invalidation_push_handler(self._pushed)  # as redis-py's own cache does
        # Changes made before tracking began were not pushed.
        self._changed, self._ping_at = None, 0.0
        return connection

    def _pushed(self, message: list[Any]) -> None:
        keys = message[1]
        if keys is None or self._changed is None:
            self._changed = None
            return
        for key in keys:
            name = key.decode() if isinstance(key, bytes) else key
            self._changed.add(name.removeprefix(RedisStore.PREFIX))

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.disconnect()
            self._connection = None

    def close(self) -> None:
        """From another thread: closing the socket wakes a wait() that reads it."""
        self._closed = True
        self._drop()


_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def open_store(spec: str, *, timeout: float = 1.0, min_replicas: int | None = None) -> Store:
    """A store from the ``splittoken_store`` option: a directory, or a Redis URL (see RedisStore).
    A spec that looks like a URL of any other scheme is refused rather than taken for a directory name."""
    scheme, sep, _ = spec.partition("://")
    if sep and scheme in (*_SINGLE_SCHEMES, *_SENTINEL_SCHEMES, *_CLUSTER_SCHEMES):
        return RedisStore(spec, timeout=timeout, min_replicas=min_replicas)
    if sep and _URL_SCHEME.fullmatch(scheme):
        raise ValueError(f"unknown store URL scheme {scheme}://: a directory, redis://, rediss://, unix://, "
                         "redis[s]+sentinel:// or redis[s]+cluster://")  # fmt: skip
    if min_replicas is not None:
        raise ValueError("min_replicas applies to a Redis store only")
    return DiskStore(spec, timeout=timeout)
