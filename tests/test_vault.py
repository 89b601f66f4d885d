"""vault.py and its record cache (cache.py): the one way to the store, and joins that need no store read.

First over an in-memory store whose change feed the test drives, then over the real stores: two vaults on
one diskcache directory or one redis-server, as two proxies would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from redis_server import RedisServer
from splittoken import cache as cache_module
from splittoken import seal
from splittoken import vault as vault_module
from splittoken.cache import RecordCache
from splittoken.disk_store import CHANGE_LOG_SECONDS, DiskStore
from splittoken.errors import StoreUnavailable
from splittoken.redis_store import RedisStore
from splittoken.seal import Record
from splittoken.store import open_store
from splittoken.vault import REFRESH_HANDLE_BYTES, Vault, new_refresh_handle

HANDLE = "Zm9vYmFyYmF6cXV4LXNpZ25hdHVyZS1vZi10aGUtand0LWFiY2RlZmdoaWprbG1u"
OTHER = "b3RoZXItc2lnbmF0dXJlLW9mLWFub3RoZXItand0LTAxMjM0NTY3ODlhYmNkZWY"
SECRET = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZS13b25kZXJsYW5kIiwiZXhwIjoxODAwMDAwMDAwfQ"
SUBJECT = "alice-wonderland@example.com"
# A hang guard for what a watcher thread does in the background, not a bound: the bounds the issue sets are
# measured end to end (test_e2e_cache.py).
EVENTUALLY = 5.0


def record(**kw: object) -> Record:
    fields: dict[str, object] = {"kind": "access", "secret": SECRET, "expires_at": 1.8e9, "subject": SUBJECT}
    fields.update(kw)
    return Record(**fields)  # type: ignore[arg-type]


def eventually(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + EVENTUALLY
    while not condition():
        assert time.monotonic() < deadline, "the watcher never got there"
        time.sleep(0.002)


def entries(vault: Vault) -> int:
    assert vault.cache is not None
    return len(vault.cache)


def store_down(*_: object) -> None:
    raise StoreUnavailable("store down (test)")


class Feed:
    """A change feed the test drives. Each wait() reports whatever was announced and confirms, unless the
    feed is silenced (then it blocks, confirming nothing) or told to fail."""

    def __init__(self) -> None:
        self._news: queue.Queue[frozenset[str] | Exception | None] = queue.Queue()
        self.speaking = threading.Event()
        self.speaking.set()
        self.closed = False

    def announce(self, keys: frozenset[str] | Exception | None) -> None:
        self._news.put(keys)

    def settled(self) -> bool:
        return True  # what these tests drive is the trust window; test_redis_killed_… the socket

    def wait(self, seconds: float) -> tuple[float, frozenset[str] | None]:
        while not self.speaking.wait(seconds):
            pass
        confirmed = time.monotonic()
        changed: set[str] | None = set()
        try:
            news = self._news.get(timeout=seconds)
            while True:
                if isinstance(news, Exception):
                    raise news
                changed = None if news is None or changed is None else changed | news
                news = self._news.get_nowait()
        except queue.Empty:
            pass
        return confirmed, None if changed is None else frozenset(changed)

    def close(self) -> None:
        self.closed = True
        self.speaking.set()


class MemoryStore:
    """A store in a dict that counts its reads; ``blocking`` as a networked store would be."""

    def __init__(self, blocking: bool = False, feed: Feed | None = None) -> None:
        self.blocking = blocking
        self.feed = feed
        self.data: dict[str, tuple[bytes, float]] = {}
        self.reads = 0
        self.during_read: Callable[[], None] = lambda: None

    def put(self, key: str, value: bytes, expires_at: float) -> None:
        self.data[key] = (value, expires_at)

    def get(self, key: str) -> bytes | None:
        self.reads += 1
        item = self.data.get(key)
        self.during_read()
        return item[0] if item else None

    def delete(self, key: str) -> bool:
        return self.data.pop(key, None) is not None

    def stats(self) -> object:
        return None

    def purge(self) -> int:
        return 0

    def changes(self) -> Feed | None:
        return self.feed

    def close(self) -> None:
        pass


# -----------------------------------------------------------------------------------------------------------
# The vault without a cache


def test_vault_keep_find_forget() -> None:
    store, now = MemoryStore(), [1000.0]
    vault = Vault(store, clock=lambda: now[0], leeway=5)  # type: ignore[arg-type]
    r = record(expires_at=1100.0)
    vault.keep_now(HANDLE, r)
    (key,) = store.data
    assert key == seal.store_key(HANDLE)
    assert store.data[key][1] == 1105.0  # the store keeps it for the leeway too
    assert vault.find_now(HANDLE) == r
    assert vault.find_now(HANDLE + "x") is None
    now[0] = 1104.9
    assert vault.find_now(HANDLE) == r
    now[0] = 1105.0
    assert vault.find_now(HANDLE) is None  # expired records are refused before the store purges them
    now[0] = 1000.0
    assert vault.forget_now(HANDLE)
    assert not vault.forget_now(HANDLE)
    assert vault.find_now(HANDLE) is None


def test_vault_record_copied_under_another_key_is_not_found() -> None:
    store = MemoryStore()
    vault = Vault(store, clock=lambda: 0.0)  # type: ignore[arg-type]
    vault.keep_now(HANDLE, record())
    attacker = new_refresh_handle()
    store.data[seal.store_key(attacker)] = store.data[seal.store_key(HANDLE)]
    assert vault.find_now(attacker) is None


def test_leases_and_a_closed_vault_fail_closed(tmp_path: Path) -> None:
    vault = Vault(DiskStore(tmp_path))
    assert asyncio.run(vault.lease("refresh-x", "me", 5.0))
    assert not asyncio.run(vault.lease("refresh-x", "other", 5.0))
    assert asyncio.run(vault.release("refresh-x", "me"))
    vault.close()
    # What still holds a vault that a reconfiguration replaced (a lease being renewed) gets a store error.
    with pytest.raises(StoreUnavailable, match="closed"):
        asyncio.run(vault.lease("refresh-x", "me", 5.0))
    with pytest.raises(StoreUnavailable, match="closed"):
        asyncio.run(vault.find(HANDLE))


def test_new_refresh_handles_are_long_random_base64url() -> None:
    handles = {new_refresh_handle() for _ in range(1000)}
    assert len(handles) == 1000
    for h in handles:
        assert len(h) >= REFRESH_HANDLE_BYTES * 4 // 3
        assert set(h) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_no_cache_without_a_size_or_without_a_feed() -> None:
    assert Vault(MemoryStore(feed=Feed()), cache_size=0).cache is None  # type: ignore[arg-type]
    assert Vault(MemoryStore(feed=None), cache_size=100).cache is None  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        RecordCache(0, Feed())


# -----------------------------------------------------------------------------------------------------------
# The cache, over a feed the test drives


@pytest.fixture
def feed() -> Feed:
    return Feed()


@pytest.fixture
def cached(feed: Feed) -> Iterator[tuple[Vault, MemoryStore]]:
    """A vault with a cache of 3 over a networked (blocking) store, its cache live."""
    store = MemoryStore(blocking=True, feed=feed)
    vault = Vault(store, cache_size=3)  # type: ignore[arg-type]
    assert vault.cache is not None
    eventually(lambda: vault.cache is not None and vault.cache.live)
    yield vault, store
    vault.close()
    assert feed.closed


def test_a_hit_reads_no_store_opens_no_seal_and_does_not_leave_the_event_loop(
    cached: tuple[Vault, MemoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    vault, store = cached
    r = record()
    vault.keep_now(HANDLE, r)
    assert asyncio.run(vault.find(HANDLE)) == r  # a miss: read, opened, kept
    assert store.reads == 1 and entries(vault) == 1
    monkeypatch.setattr(vault_module, "open_sealed", store_down)
    monkeypatch.setattr(store, "get", store_down)
    find = vault.find(HANDLE)
    # Done at the first step: the coroutine never waited for the store's threads.
    with pytest.raises(StopIteration) as done:
        find.send(None)
    assert done.value.value == r
    assert vault.find_now(HANDLE) == r
    assert vault.cache is not None
    assert (vault.cache.hits, vault.cache.misses, vault.cache.untrusted) == (2, 1, 0)


def test_expiry_is_judged_on_every_hit(feed: Feed) -> None:
    now = [1000.0]
    vault = Vault(MemoryStore(feed=feed), clock=lambda: now[0], leeway=5, cache_size=3)  # type: ignore[arg-type]
    eventually(lambda: vault.cache is not None and vault.cache.live)
    vault.keep_now(HANDLE, record(expires_at=1100.0))
    assert vault.find_now(HANDLE) is not None
    assert entries(vault) == 1
    now[0] = 1105.0
    assert vault.find_now(HANDLE) is None
    vault.close()


def test_only_access_records_are_cached(cached: tuple[Vault, MemoryStore]) -> None:
    # Refresh rotation reads, then replaces: it must see the store as the other proxies left it.
    vault, store = cached
    vault.keep_now(HANDLE, record(kind="refresh"))
    vault.keep_now(OTHER, record(kind="rotated"))
    for _ in range(2):
        assert vault.find_now(HANDLE) is not None and vault.find_now(OTHER) is not None
    assert store.reads == 4 and entries(vault) == 0


def test_a_change_announced_by_the_store_evicts(cached: tuple[Vault, MemoryStore], feed: Feed) -> None:
    vault, store = cached
    vault.keep_now(HANDLE, record())
    vault.keep_now(OTHER, record())
    vault.find_now(HANDLE), vault.find_now(OTHER)
    del store.data[seal.store_key(HANDLE)]  # revoked by another proxy
    feed.announce(frozenset({seal.store_key(HANDLE)}))
    eventually(lambda: vault.find_now(HANDLE) is None)
    reads = store.reads
    assert vault.find_now(OTHER) is not None and store.reads == reads  # still cached
    feed.announce(None)  # possibly anything (a flushed database, a reconnection)
    eventually(lambda: entries(vault) == 0)


def test_forget_and_keep_evict_here_at_once(cached: tuple[Vault, MemoryStore]) -> None:
    vault, _ = cached
    vault.keep_now(HANDLE, record())
    vault.find_now(HANDLE)
    vault.keep_now(HANDLE, record(subject="replaced"))
    found = vault.find_now(HANDLE)
    assert found is not None and found.subject == "replaced"
    assert vault.forget_now(HANDLE)
    assert vault.find_now(HANDLE) is None


def test_a_failed_revocation_evicts_too(
    cached: tuple[Vault, MemoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    vault, store = cached
    vault.keep_now(HANDLE, record())
    vault.find_now(HANDLE)
    monkeypatch.setattr(store, "delete", store_down)
    with pytest.raises(StoreUnavailable):
        vault.forget_now(HANDLE)
    monkeypatch.setattr(store, "get", store_down)
    with pytest.raises(StoreUnavailable):  # asked the store again, not answered from memory
        vault.find_now(HANDLE)


def test_a_record_read_before_an_eviction_is_not_kept(cached: tuple[Vault, MemoryStore]) -> None:
    # The read sees the record; its revocation is announced before the reader keeps what it read.
    vault, store = cached
    vault.keep_now(HANDLE, record())
    assert vault.cache is not None
    store.during_read = lambda: vault.cache.evict((seal.store_key(HANDLE),))  # type: ignore[union-attr]
    assert vault.find_now(HANDLE) is not None  # was live when read: this request may still use it
    assert len(vault.cache) == 0


def test_the_cache_is_bounded_least_recently_used_first(cached: tuple[Vault, MemoryStore]) -> None:
    vault, store = cached
    handles = [f"handle-{i}" for i in range(4)]
    for handle in handles:
        vault.keep_now(handle, record())
    for handle in handles[:3]:
        vault.find_now(handle)
    vault.find_now(handles[0])  # used again: now the most recent
    vault.find_now(handles[3])  # a fourth: handle-1 goes
    assert entries(vault) == 3
    reads = store.reads
    vault.find_now(handles[0]), vault.find_now(handles[2]), vault.find_now(handles[3])
    assert store.reads == reads
    vault.find_now(handles[1])
    assert store.reads == reads + 1


def test_a_silent_feed_makes_the_cache_dark(
    cached: tuple[Vault, MemoryStore], feed: Feed, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hung store or a partition: no news is not good news, the cache stops answering.
    vault, store = cached
    vault.keep_now(HANDLE, record())
    vault.find_now(HANDLE)
    feed.speaking.clear()
    assert vault.cache is not None
    eventually(lambda: not vault.cache.live)  # type: ignore[union-attr]
    monkeypatch.setattr(store, "get", store_down)
    with pytest.raises(StoreUnavailable):
        vault.find_now(HANDLE)
    assert vault.cache.untrusted == 1  # type: ignore[union-attr]
    feed.speaking.set()  # nothing was lost, only late: the entries are trusted again
    eventually(lambda: vault.cache.live)  # type: ignore[union-attr]
    assert vault.find_now(HANDLE) is not None


def test_a_lost_feed_empties_the_cache_until_it_is_back(
    cached: tuple[Vault, MemoryStore],
    feed: Feed,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(cache_module, "RETRY_SECONDS", 0.01)
    vault, store = cached
    vault.keep_now(HANDLE, record())
    vault.find_now(HANDLE)
    assert vault.cache is not None
    feed.announce(StoreUnavailable("connection reset (test)"))
    eventually(lambda: len(vault.cache) == 0)  # type: ignore[union-attr]
    assert "record cache off" in caplog.text and "connection reset (test)" in caplog.text
    eventually(lambda: vault.cache.live)  # type: ignore[union-attr]
    reads = store.reads
    assert vault.find_now(HANDLE) is not None and store.reads == reads + 1


# -----------------------------------------------------------------------------------------------------------
# Over the real stores: two vaults on the same data, as two proxies


@contextlib.contextmanager
def vault_pair(spec: str) -> Iterator[tuple[Vault, Vault]]:
    vaults = (Vault(open_store(spec), cache_size=10), Vault(open_store(spec), cache_size=10))
    try:
        yield vaults
    finally:
        for vault in vaults:
            vault.close()


@pytest.fixture(params=["disk", "redis"])
def two_vaults(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Vault, Vault]]:
    spec = str(tmp_path / "store") if request.param == "disk" else request.getfixturevalue("redis_server").url
    with vault_pair(spec) as vaults:
        yield vaults


def live_cache(vault: Vault) -> RecordCache:
    assert vault.cache is not None
    eventually(lambda: vault.cache is not None and vault.cache.live)
    return vault.cache


def test_a_revocation_on_one_reaches_the_others_cache(two_vaults: tuple[Vault, Vault]) -> None:
    a, b = two_vaults
    b_cache = live_cache(b)
    a.keep_now(HANDLE, record())
    eventually(lambda: b.find_now(HANDLE) is not None and len(b_cache) == 1)
    assert a.forget_now(HANDLE)
    eventually(lambda: len(b_cache) == 0)
    assert b.find_now(HANDLE) is None


def test_an_overwrite_on_one_reaches_the_others_cache(two_vaults: tuple[Vault, Vault]) -> None:
    a, b = two_vaults
    b_cache = live_cache(b)
    a.keep_now(HANDLE, record())
    eventually(lambda: b.find_now(HANDLE) is not None and len(b_cache) == 1)
    a.keep_now(HANDLE, record(subject="replaced"))
    eventually(lambda: len(b_cache) == 0)
    found = b.find_now(HANDLE)
    assert found is not None and found.subject == "replaced"


def test_disk_change_log_announces_deletes_and_overwrites_only(tmp_path: Path) -> None:
    store = DiskStore(tmp_path / "store")
    changes = store.changes()
    assert changes.wait(0)[1] is None  # the first answer: anything may have changed before
    key = seal.store_key(HANDLE)
    store.put(key, b"sealed", time.time() + 60)  # new: nobody can have it cached
    assert not store.delete(seal.store_key(OTHER))  # absent: nothing to announce
    assert changes.wait(0)[1] == frozenset()
    store.put(key, b"resealed", time.time() + 60)
    assert changes.wait(0)[1] == {key}
    store.delete(key)
    before = time.monotonic()
    confirmed, keys = changes.wait(0)
    assert keys == {key} and confirmed >= before
    store.close()


def test_disk_change_log_is_purged_and_a_reader_that_missed_entries_drops_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, reader = DiskStore(tmp_path / "store"), DiskStore(tmp_path / "store")
    changes = reader.changes()
    changes.wait(0)
    for handle in (HANDLE, OTHER):
        store.put(seal.store_key(handle), b"sealed", time.time() + 60)
        store.delete(seal.store_key(handle))
    monkeypatch.setattr("splittoken.disk_store.CHANGE_LOG_SECONDS", -1)  # every entry is old enough
    store.purge()
    store.put(seal.store_key(HANDLE), b"sealed", time.time() + 60)
    store.delete(seal.store_key(HANDLE))
    assert changes.wait(0)[1] is None
    assert changes.wait(0)[1] == frozenset()
    assert CHANGE_LOG_SECONDS >= 60  # the real horizon is far beyond any live reader's lag
    store.close(), reader.close()


def test_redis_flush_empties_every_cache(redis_server: RedisServer) -> None:
    with vault_pair(redis_server.url) as (a, b):
        b_cache = live_cache(b)
        a.keep_now(HANDLE, record())
        eventually(lambda: b.find_now(HANDLE) is not None and len(b_cache) == 1)
        with redis.Redis(host="127.0.0.1", port=redis_server.port) as admin:
            admin.flushall()
        eventually(lambda: len(b_cache) == 0)
        assert b.find_now(HANDLE) is None


def test_redis_down_empties_the_cache_at_once_and_it_comes_back(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_module, "RETRY_SECONDS", 0.05)
    vault = Vault(RedisStore(redis_server.url, timeout=0.5), cache_size=10)
    try:
        cache = live_cache(vault)
        vault.keep_now(HANDLE, record())
        # Until Redis has pushed the write's own invalidation, a record read may be older than it: not kept.
        eventually(lambda: vault.find_now(HANDLE) is not None and len(cache) == 1)
        redis_server.kill()
        eventually(lambda: len(cache) == 0 and not cache.live)
        with pytest.raises(StoreUnavailable):
            vault.find_now(HANDLE)
        redis_server.start()  # empty: no append-only file
        eventually(lambda: cache.live)
        assert vault.find_now(HANDLE) is None
    finally:
        vault.close()


@pytest.mark.parametrize(
    "url",
    ["redis+sentinel://127.0.0.1:1/mymaster", "redis+cluster://127.0.0.1:1"],
    ids=["sentinel", "cluster"],
)
def test_sentinel_and_cluster_caches_stay_dark_while_nothing_answers(url: str) -> None:
    vault = Vault(open_store(url), cache_size=10)
    try:
        assert vault.cache is not None
        time.sleep(0.2)  # the watcher has tried and failed by now
        assert not vault.cache.live
    finally:
        vault.close()


def test_redis_killed_is_refused_by_the_cache_before_its_watcher_hears_it(redis_server: RedisServer) -> None:
    """The closed connection is seen on the next look-up, not after the last confirmation's trust ran out."""
    vault = Vault(RedisStore(redis_server.url, timeout=0.5), cache_size=10)
    try:
        cache = live_cache(vault)
        vault.keep_now(HANDLE, record())
        eventually(lambda: vault.find_now(HANDLE) is not None and len(cache) == 1)
        # The write's own invalidation reaches the feed too: settled once the watcher has read it.
        eventually(cache._changes.settled)  # type: ignore[attr-defined]
        redis_server.kill()
        assert not cache._changes.settled()  # type: ignore[attr-defined]  # its socket reads EOF
        assert cache.get(seal.store_key(HANDLE)) is None
    finally:
        vault.close()
