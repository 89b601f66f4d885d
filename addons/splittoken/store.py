"""Where sealed records live: one small interface, a diskcache and a Redis implementation.

A store only ever sees opaque keys (SHA-256 of a handle) and sealed bytes; sealing is the vault's business.
Besides records it keeps leases: short locks by which several proxies agree which of them does a piece of
work (one refresh of one refresh handle), in a keyspace of their own so that no record key can name one.
Every failure to reach the data surfaces as StoreUnavailable, so the proxy can fail closed (503).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from .errors import ReplicasInvalid, StoreInvalid


class Changes(Protocol):
    """A store's account of which records changed, for a cache of opened records (cache.RecordCache): every
    record key that any client of the store deleted or overwrote. Called from one thread."""

    def wait(self, seconds: float) -> tuple[float, frozenset[str] | None]:
        """Wait up to about ``seconds`` for news, then answer ``(confirmed, keys)``: the keys changed since
        the previous call (None: possibly any, as after connecting), and a time.monotonic() reading such that
        every change made before it is among the keys reported so far. Returns early when a change arrives.
        Raises StoreUnavailable when the feed is lost: changes may have gone unreported."""
        ...

    def settled(self) -> bool:
        """From any thread, cheaply: whether nothing the feed has received waits unread (a push, a closed
        connection). A cache answers only then: news that came in is heard before anything is served."""
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


def check_lease(owner: str, ttl_seconds: float) -> None:
    if not owner:
        raise ValueError("a lease needs an owner")
    if not ttl_seconds > 0:
        raise ValueError(f"a lease needs a positive ttl, not {ttl_seconds}")


_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def open_store(spec: str, *, timeout: float = 1.0, min_replicas: int | None = None) -> Store:
    """A store from the ``splittoken_store`` option: a directory, or a Redis URL (see RedisStore).
    A spec that looks like a URL of any other scheme is refused rather than taken for a directory name."""
    # Imported here: each implementation imports this interface.
    from .disk_store import DiskStore
    from .redis_config import SCHEMES
    from .redis_store import RedisStore

    scheme, sep, _ = spec.partition("://")
    if sep and scheme in SCHEMES:
        return RedisStore(spec, timeout=timeout, min_replicas=min_replicas)
    if sep and _URL_SCHEME.fullmatch(scheme):
        raise StoreInvalid(
            f"unknown store URL scheme {scheme}://: a directory, redis://, rediss://, unix://, "
            "redis[s]+sentinel:// or redis[s]+cluster://"
        )
    if min_replicas is not None:
        raise ReplicasInvalid("min_replicas applies to a Redis store only")
    return DiskStore(spec, timeout=timeout)
