"""The store for several proxies: Redis (one server, Sentinel or Cluster)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from redis._parsers import _RESP3Parser
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry
from redis.sentinel import SentinelConnectionPool

from .errors import ReplicasInvalid, StoreInvalid, StoreUnavailable
from .redis_changes import RedisChanges, cluster_connections, cluster_masters, still_master
from .redis_config import REDIS_ERRORS, make_clients, redact_redis_url
from .store import StoreStats, check_lease

# A Sentinel master's client is a plain redis.Redis; its pool asks the sentinels where the master is.
type _Client = redis.Redis | RedisCluster

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
        self._making = threading.Lock()
        if min_replicas is not None and min_replicas < 0:
            raise ReplicasInvalid(f"min_replicas must be 0 or more, not {min_replicas}")
        try:
            clients = make_clients(url, timeout)
        except (ValueError, TypeError) as e:
            raise StoreInvalid(f"invalid Redis URL {self._safe_url}: {e}") from None
        if clients.kind == "cluster" and min_replicas:
            raise ReplicasInvalid("min_replicas: Redis Cluster writes are not waited for")
        self._min_replicas = 0 if clients.kind == "cluster" else min_replicas
        self._options = clients.options
        self._sentinel = clients.sentinel
        self._cluster_options = clients.cluster  # the cluster client is made on first use
        self._redis: _Client | None = clients.redis

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
        except REDIS_ERRORS as e:
            failed = time.monotonic()
            if isinstance(e, redis.TimeoutError | TimeoutError) or failed - started >= self._timeout:
                self._hung_until[scope] = failed + self._timeout
            raise self._unavailable(action, e) from None

    def _skipped(self, action: str) -> StoreUnavailable:
        return StoreUnavailable(f"redis {action} skipped ({self._safe_url}): it timed out moments ago")

    def _unavailable(self, action: str, e: Exception) -> StoreUnavailable:
        message = f"redis {action} failed ({self._safe_url}): {type(e).__name__}: {e}"
        # redis-py's messages name host and port only; scrub anyway so no future wording can leak the secret.
        if password := self._options.get("password"):
            message = message.replace(password, "***")
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
        check_lease(owner, ttl_seconds)
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

    def changes(self) -> RedisChanges:
        """The invalidations of the servers that take the writes. Behind Sentinel a demoted or cut-off master
        still answers PING but no longer hears the writes, and in a Cluster a promoted replica or a new node
        is a master nobody listens to: each confirmation asks the servers their ROLE, and the sentinels or the
        masters who the masters are; the cache is trusted only while the answers name the feed's servers."""
        # The data connections' settings (address, TLS, password, timeouts), but RESP3 for push messages, with
        # redis-py's own parser for them (hiredis' handles pushes otherwise), and no retry or health check of
        # its own: the feed reconnects, and its confirmations are the health check.
        feed = {
            "protocol": 3, "parser_class": _RESP3Parser, "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
        }  # fmt: skip
        if self._cluster_options is not None:
            startup = [(node.host, node.port) for node in self._cluster_options["startup_nodes"]]
            options = {k: v for k, v in self._options.items() if k != "ssl"}
            settings = {**options, "socket_timeout": self._timeout, "socket_connect_timeout": self._timeout}
            connection_class = redis.SSLConnection if self._options["ssl"] else redis.Connection
            connect = cluster_connections(startup, connection_class, {**settings, **feed})
            return RedisChanges(self.PREFIX, connect, self._unavailable, cluster_masters)
        assert isinstance(self._redis, redis.Redis)
        pool = self._redis.connection_pool
        settings = {**pool.connection_kwargs, **feed}
        confirm = still_master(pool) if isinstance(pool, SentinelConnectionPool) else None
        return RedisChanges(
            self.PREFIX, lambda: [pool.connection_class(**settings)], self._unavailable, confirm
        )

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
        if self._sentinel is not None:
            self._sentinel.close()
