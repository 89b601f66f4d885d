"""The change feed of a Redis store, by which record caches hear of every write at once."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis

from .errors import StoreUnavailable
from .redis_config import REDIS_ERRORS


class RedisChanges:
    """Redis client-side caching's invalidation messages, on a connection of its own: CLIENT TRACKING in
    broadcast mode (BCAST, RESP3) makes Redis push the name of every key under the store's prefix that anyone
    writes, deletes, expires or evicts, as it happens, and ``["invalidate", null]`` for a flushed database.
    The confirmation is a PING: Redis answers it on the same connection after every push it owed before it, so
    once the PONG is read every change made before the PING was sent has been reported.

    Not redis-py's own client-side cache (``cache_config``): it caches replies (still sealed: unsealing stays
    on every join), reads pushes only when a command is sent (on the store's threads, so no join without a
    thread hop), and never notices a server that went silent. It also needs Redis 7.4; tracking, 6.0.
    """

    def __init__(
        self,
        prefix: str,
        connect: Callable[[], redis.Connection],
        unavailable: Callable[[str, Exception], StoreUnavailable],
    ) -> None:
        self._prefix = prefix
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
        except REDIS_ERRORS as e:
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
        connection.send_command("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", self._prefix)
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
            self._changed.add(name.removeprefix(self._prefix))

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.disconnect()
            self._connection = None

    def close(self) -> None:
        """From another thread: closing the socket wakes a wait() that reads it."""
        self._closed = True
        self._drop()
