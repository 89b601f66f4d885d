"""The change feed of a Redis store, by which record caches hear of every write at once."""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.sentinel import SentinelConnectionPool

from .errors import StoreUnavailable
from .redis_config import REDIS_ERRORS

Connect = Callable[
    [], list[redis.Connection]
]  # the servers that take the writes: one, or a cluster's masters
Confirm = Callable[[Sequence[redis.Connection]], None]


class RedisChanges:
    """Redis client-side caching's invalidation messages, on connections of its own: CLIENT TRACKING in
    broadcast mode (BCAST, RESP3) makes Redis push the name of every key under the store's prefix that anyone
    writes, deletes, expires or evicts, as it happens, and ``["invalidate", null]`` for a flushed database.
    The confirmation is a command (PING, unless ``confirm`` says otherwise): Redis answers it on the same
    connection after every push it owed before it, so once the answer is read every change made before it
    was sent has been reported.

    One server, or the master a Sentinel names: pushes are read as they come, between confirmations. The
    masters of a Cluster: one connection each (BCAST hears every key whatever its slot, so slots may move),
    read at each confirmation, ``seconds`` apart.

    Not redis-py's own client-side cache (``cache_config``): it caches replies (still sealed: unsealing stays
    on every join), reads pushes only when a command is sent (on the store's threads, so no join without a
    thread hop), and never notices a server that went silent. It also needs Redis 7.4; tracking, 6.0.
    """

    def __init__(
        self,
        prefix: str,
        connect: Connect,
        unavailable: Callable[[str, Exception], StoreUnavailable],
        confirm: Confirm | None = None,
    ) -> None:
        """``confirm``: instead of a PING, commands whose answers show that the servers still take the writes
        (raising redis.ConnectionError when not); their answers come after the pushes all the same."""
        self._prefix = prefix
        self._connect = connect
        self._unavailable = unavailable
        self._confirm = confirm or _ping
        self._connections: list[redis.Connection] = []
        self._changed: set[str] | None = set()  # None: possibly any
        self._confirmed = -float("inf")
        self._ping_at = 0.0  # time.monotonic() of the next confirmation
        self._closed = threading.Event()

    def wait(self, seconds: float) -> tuple[float, frozenset[str] | None]:
        try:
            connections = self._connections or self._track()
            left = self._ping_at - time.monotonic()
            if left > 0 and len(connections) == 1:
                if connections[0].can_read(left):
                    connections[0].read_response(push_request=True)  # a push, reported by _pushed
            elif left > 0:
                self._closed.wait(left)  # a cluster's pushes wait in their sockets for the confirmation
            else:
                sent = time.monotonic()
                self._confirm(connections)  # pushes that came before its answers were reported on the way
                self._confirmed, self._ping_at = sent, sent + seconds
        except REDIS_ERRORS as e:
            self._drop()
            raise self._unavailable("change feed", e) from None
        changed, self._changed = self._changed, set()
        return self._confirmed, None if changed is None else frozenset(changed)

    def _track(self) -> list[redis.Connection]:
        if self._closed.is_set():
            raise redis.ConnectionError("change feed closed")
        for connection in self._connect():
            self._connections.append(connection)
            connection.connect()
            connection.send_command("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", self._prefix)
            connection.read_response()  # OK, or raises (a Redis before 6.0, an ACL without CLIENT)
            connection._parser.set_invalidation_push_handler(self._pushed)  # as redis-py's own cache does
        # Changes made before tracking began were not pushed.
        self._changed, self._ping_at = None, 0.0
        return self._connections

    def _pushed(self, message: list[Any]) -> None:
        keys = message[1]
        if keys is None or self._changed is None:
            self._changed = None
            return
        for key in keys:
            name = key.decode() if isinstance(key, bytes) else key
            self._changed.add(name.removeprefix(self._prefix))

    def settled(self) -> bool:
        """No socket of the feed is readable: no push and no closed connection waits for the watcher (a
        killed Redis is refused at once, not after the trust of the last confirmation runs out)."""
        sockets = [connection._sock for connection in self._connections]
        if not sockets or None in sockets:
            return False
        try:
            readable, _, _ = select.select(sockets, [], [], 0)
        except (OSError, ValueError):  # closed meanwhile by the watcher
            return False
        return not readable

    def _drop(self) -> None:
        connections, self._connections = self._connections, []
        for connection in connections:
            connection.disconnect()

    def close(self) -> None:
        """From another thread: closing the sockets wakes a wait() that reads them."""
        self._closed.set()
        self._drop()


def _ping(connections: Sequence[redis.Connection]) -> None:
    for connection in connections:
        connection.send_command("PING")
        connection.read_response()


def _role(connection: redis.Connection) -> str:
    connection.send_command("ROLE")
    role = connection.read_response()[0]
    return role.decode() if isinstance(role, bytes) else str(role)


def still_master(pool: SentinelConnectionPool) -> Confirm:
    """The confirmation behind Sentinel: the feed's server says it is the master, and the sentinels agree."""

    def confirm(connections: Sequence[redis.Connection]) -> None:
        (connection,) = connections
        if (role := _role(connection)) != "master":
            raise redis.ConnectionError(f"the change feed's server is a {role} now, not the master")
        # Asked after the ROLE answer: a failover before it shows here (redis-py then also drops the pool's
        # idle connections to the old master).
        if pool.get_master_address() != (connection.host, connection.port):
            raise redis.ConnectionError("the sentinels name another master than the change feed's server")

    return confirm


def cluster_masters(connections: Sequence[redis.Connection]) -> None:
    """The confirmation in a Cluster: every feed's server is a master, and every one of them knows no master
    but these (a promoted replica, a new node: a master the feed does not hear)."""
    tracked = {(connection.host, connection.port) for connection in connections}
    for connection in connections:
        if (role := _role(connection)) != "master":
            raise redis.ConnectionError(f"a change feed's server is a {role} now, not a master")
        connection.send_command("CLUSTER", "NODES")
        if (seen := masters_in(connection.read_response())) != tracked:
            raise redis.ConnectionError(f"the cluster's masters changed: {sorted(seen)}")


def masters_in(nodes: bytes | str) -> set[tuple[str, int]]:
    """The masters a CLUSTER NODES answer lists that may take writes: every one but a failed master with no
    slots left (its replica took them over). A failed master that still has slots counts: the feed cannot
    hear it, so the cache stays dark until it is back or replaced."""
    text = nodes.decode() if isinstance(nodes, bytes) else nodes
    masters = set()
    for line in text.splitlines():
        fields = line.split()
        flags = fields[2].split(",") if len(fields) >= 8 else []
        if "master" in flags and not ("fail" in flags and len(fields) == 8):  # slots follow the 8 fields
            address = fields[1].partition("@")[0]  # ip:port@cport[,hostname]
            host, _, port = address.rpartition(":")  # an IPv6 address is spelt bare, or in brackets
            masters.add((host.strip("[]"), int(port)))
    return masters


def cluster_connections(
    startup: Sequence[tuple[str, int]], connection_class: type[redis.Connection], settings: dict[str, Any]
) -> Connect:
    """Connections to every master that the first startup node to answer lists."""

    def connect() -> list[redis.Connection]:
        failures = []
        for host, port in startup:
            probe = connection_class(host=host, port=port, **settings)
            try:
                probe.connect()
                probe.send_command("CLUSTER", "NODES")
                masters = masters_in(probe.read_response())
            except REDIS_ERRORS as e:
                failures.append(f"{host}:{port}: {type(e).__name__}")
                continue
            finally:
                probe.disconnect()
            return [connection_class(host=h, port=p, **settings) for h, p in sorted(masters)]
        raise redis.ConnectionError(f"no startup node answered ({', '.join(failures)})")

    return connect
