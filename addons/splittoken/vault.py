"""The vault: handles in, sealed records out. Joins sealing to a store; knows nothing of mitmproxy."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from .seal import Record, SealBroken, open_sealed, seal, store_key
from .store import Store, StoreStats

# 256 bits from the OS CSPRNG, base64url: as hard to guess as any JWS signature handle.
REFRESH_HANDLE_BYTES = 32


def new_refresh_handle() -> str:
    return secrets.token_urlsafe(REFRESH_HANDLE_BYTES)


class Vault:
    def __init__(self, store: Store, clock: Callable[[], float], leeway: float = 0) -> None:
        self.store = store
        self.clock = clock
        self.leeway = leeway

    def keep(self, handle: str, record: Record) -> None:
        """Store a record under a handle, for as long as the record lives. Raises StoreUnavailable."""
        self.store.put(store_key(handle), seal(handle, record), record.expires_at + self.leeway)

    def find(self, handle: str) -> Record | None:
        """The live record for a handle, or None (unknown, expired, or not sealed under this handle).

        Expired records are refused here even when the store has not purged them yet.
        Raises StoreUnavailable.
        """
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

    def forget(self, handle: str) -> bool:
        """Drop a handle's record. Raises StoreUnavailable."""
        return self.store.delete(store_key(handle))


def describe(stats: StoreStats) -> str:
    """One line for administrators: counts only, never a handle or a claim."""
    return f"records={stats.records} expired={stats.expired}"
