"""Stores: one contract both implementations must keep, then the faults each one meets in real life."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from redis_server import RedisServer
from splittoken.disk_store import DiskStore
from splittoken.errors import StoreUnavailable
from splittoken.redis_config import redact_redis_url
from splittoken.redis_store import RedisStore
from splittoken.store import Store, StoreStats, open_store

TIMEOUT = 0.5  # store timeout in the fault tests: short, so that a hung Redis costs little test time
PASSWORD = "s3cret/p@ss:word"  # characters that need percent-encoding in a URL


def far() -> float:
    return time.time() + 600


def key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()  # what the vault uses: SHA-256 of a handle


@pytest.fixture(params=["disk", "redis"])
def open_same_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Opens one more instance on the same data each call, as another proxy process would."""
    if request.param == "disk":

        def make() -> Store:
            return DiskStore(tmp_path / "store")
    else:
        url = request.getfixturevalue("redis_server").url

        def make() -> Store:
            return RedisStore(url)

    opened: list[Store] = []

    def open_one() -> Store:
        opened.append(make())
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def store(open_same_store: Callable[[], Store]) -> Store:
    return open_same_store()


# --- the contract ---


@pytest.mark.parametrize(
    "value", [b"", bytes(range(256)), os.urandom(64 * 1024)], ids=["empty", "all-bytes", "64KiB"]
)
def test_round_trip_preserves_bytes(store: Store, value: bytes) -> None:
    store.put(key("a"), value, far())
    assert store.get(key("a")) == value


def test_get_missing_is_none(store: Store) -> None:
    assert store.get(key("never stored")) is None


def test_delete_says_whether_it_removed(store: Store) -> None:
    store.put(key("a"), b"v", far())
    assert store.delete(key("a")) is True
    assert store.get(key("a")) is None
    assert store.delete(key("a")) is False


def test_record_expires_at_its_time(store: Store) -> None:
    store.put(key("a"), b"v", time.time() + 1)
    assert store.get(key("a")) == b"v"
    time.sleep(1.2)
    assert store.get(key("a")) is None


def test_record_already_expired_is_not_stored(store: Store) -> None:
    store.put(key("a"), b"v", time.time() - 1)
    assert store.get(key("a")) is None
    assert store.stats() == StoreStats(records=0, expired=0)


def test_put_overwrites(store: Store) -> None:
    store.put(key("a"), b"old", far())
    store.put(key("a"), b"new", far())
    assert store.get(key("a")) == b"new"
    assert store.stats().records == 1


def test_stats_count_records(store: Store) -> None:
    assert store.stats() == StoreStats(records=0, expired=0)
    for name in "abc":
        store.put(key(name), b"v", far())
    assert store.stats() == StoreStats(records=3, expired=0)
    store.delete(key("b"))
    assert store.stats() == StoreStats(records=2, expired=0)


def test_purge_removes_what_stats_call_expired(store: Store) -> None:
    store.put(key("live"), b"v", far())
    store.put(key("short"), b"v", time.time() + 0.2)
    time.sleep(0.3)
    before = store.stats()
    # diskcache keeps the expired row until purged; Redis drops it by itself. Either way the books balance.
    assert before.records - before.expired == 1
    assert store.purge() == before.expired
    assert store.stats() == StoreStats(records=1, expired=0)
    assert store.get(key("live")) == b"v"


def test_keys_are_opaque(store: Store) -> None:
    # Glob, separator and prefix look-alikes must neither collide nor widen a count or a delete.
    names = ["k", "K", "k*", "*", "k?", "[k]", "k:1", "splittoken:k", "ключ", key("k")]
    for name in names:
        store.put(name, name.encode(), far())
    assert store.stats().records == len(names)
    assert store.delete("*") is True
    assert [store.get(name) for name in names] == [None if name == "*" else name.encode() for name in names]


def test_instances_on_the_same_data_share_it(open_same_store: Callable[[], Store]) -> None:
    first, second = open_same_store(), open_same_store()
    first.put(key("a"), b"v", far())
    assert second.get(key("a")) == b"v"
    assert second.delete(key("a")) is True
    assert first.get(key("a")) is None


# --- DiskStore ---


@pytest.fixture
def store_on_small_disk(tmp_path: Path) -> Iterator[DiskStore]:
    """A DiskStore on a 1 MiB tmpfs: a disk that really fills up (the store itself needs ~100 KiB)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert mount.returncode == 0, f"this test mounts a tmpfs and needs root: {mount.stderr}"
    try:
        store = DiskStore(mount_point / "store")
        yield store
        store.close()
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def fill(path: Path) -> None:
    with path.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(bytes(64 * 1024))
        except OSError as e:
            assert e.errno == errno.ENOSPC


def test_disk_full_is_unavailable_then_recovers(store_on_small_disk: DiskStore) -> None:
    store = store_on_small_disk
    store.put(key("kept"), b"v", far())
    filler = store.directory.parent / "filler"
    fill(filler)
    for value in (b"x" * 100, os.urandom(64 * 1024)):  # a row in SQLite, a file of its own
        with pytest.raises(StoreUnavailable):
            store.put(key("new"), value, far())
    assert store.get(key("kept")) == b"v"  # known handles keep working on a full disk
    filler.unlink()
    store.put(key("new"), b"y", far())  # the same instance writes again once there is room
    assert store.get(key("new")) == b"y"


# --- RedisStore ---


def assert_unavailable_quickly(call: Callable[[], object]) -> StoreUnavailable:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as raised:
        call()
    assert time.monotonic() - started < 2 * TIMEOUT + 0.5  # loose: only "bounded", not "how fast"
    return raised.value


def every_call(store: Store) -> list[Callable[[], object]]:
    return [
        lambda: store.put(key("b"), b"w", far()),
        lambda: store.get(key("a")),
        lambda: store.delete(key("a")),
        store.stats,
    ]


@pytest.mark.parametrize("redis_server", [{"appendonly": True}], indirect=True)
def test_redis_down_is_unavailable_then_the_same_instance_recovers(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, timeout=TIMEOUT)
    store.put(key("a"), b"v", far())
    redis_server.stop()
    for call in every_call(store):
        assert_unavailable_quickly(call)
    redis_server.start()
    assert store.get(key("a")) == b"v"  # persisted by the append-only file, read by the same instance
    store.put(key("b"), b"w", far())
    assert store.stats() == StoreStats(records=2, expired=0)
    store.close()


def test_redis_hung_is_unavailable_within_the_timeout(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, timeout=TIMEOUT)
    store.put(key("a"), b"v", far())
    redis_server.pause()  # accepts connections, never answers
    for call in every_call(store):
        assert_unavailable_quickly(call)
    redis_server.resume()
    # A timeout makes the store fail fast for one timeout's length, so that a hung Redis does not queue
    # every request for a whole timeout; then it is back.
    assert_unavailable_quickly(lambda: store.get(key("a")))
    time.sleep(TIMEOUT)
    assert store.get(key("a")) == b"v"
    store.close()


def test_redis_store_opens_while_redis_is_down(redis_server: RedisServer) -> None:
    redis_server.stop()
    store = RedisStore(redis_server.url, timeout=TIMEOUT)  # the proxy must start, then answer 503
    assert_unavailable_quickly(lambda: store.get(key("a")))
    redis_server.start()
    store.put(key("a"), b"v", far())
    assert store.get(key("a")) == b"v"
    store.close()


def test_redis_keys_are_namespaced(redis_server: RedisServer) -> None:
    other = redis.Redis.from_url(redis_server.url)
    other.set("someone-else", b"theirs")
    other.set(key("a"), b"theirs too")
    store = RedisStore(redis_server.url)
    store.put(key("a"), b"ours", far())
    assert store.get(key("a")) == b"ours"
    assert store.stats().records == 1
    assert set(other.keys()) == {b"someone-else", key("a").encode(), f"splittoken:{key('a')}".encode()}
    assert other.get(key("a")) == b"theirs too"
    store.close()
    other.close()


def test_redis_over_a_unix_socket(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.unix_url)
    store.put(key("a"), b"v", far())
    assert store.get(key("a")) == b"v"
    store.close()


@pytest.mark.parametrize("redis_server", [{"password": PASSWORD}], indirect=True)
def test_redis_password(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    store.put(key("a"), b"v", far())
    assert store.get(key("a")) == b"v"
    assert repr(store) == f"RedisStore('redis://:***@127.0.0.1:{redis_server.port}/0')"
    store.close()

    wrong_password = "not-the-s3cret"
    wrong = RedisStore(f"redis://:{wrong_password}@127.0.0.1:{redis_server.port}/0", timeout=TIMEOUT)
    message = str(assert_unavailable_quickly(lambda: wrong.get(key("a"))))
    assert "AuthenticationError" in message
    assert wrong_password not in message
    wrong.close()

    without = RedisStore(f"redis://127.0.0.1:{redis_server.port}/0", timeout=TIMEOUT)
    assert_unavailable_quickly(lambda: without.get(key("a")))
    without.close()


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2@127.0.0.1:notaport/0",
        "redis://:hunter2@127.0.0.1:99999/0",
        "redis://:hunter2/x@127.0.0.1:6379/0",  # a raw / in the password: host and port unreadable
        "redis://:hunter2@/0",
        "redis://:hunter2@127.0.0.1:6379/zero",
        "redis://:hunter2@127.0.0.1:6379/0?no_such_option=1",
        "redis://:hunter2@127.0.0.1:6379/0?db=zero",
        "unix://:hunter2@",
    ],
)
def test_redis_malformed_url_is_a_value_error_without_the_password(url: str) -> None:
    with pytest.raises(ValueError, match="invalid Redis URL") as raised:
        RedisStore(url)
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://user@host:6379/0", "redis://user@host:6379/0"),
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:pw@host:6380/2", "rediss://user:***@host:6380/2"),
        ("redis://:p@w:/d@host/0", "redis://:***@host/0"),
        ("unix://:pw@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
        ("unix:///run/redis.sock?db=1&password=pw&x=1", "unix:///run/redis.sock?db=1&password=***&x=1"),
    ],
)
def test_redact_redis_url(url: str, safe: str) -> None:
    assert redact_redis_url(url) == safe


def test_open_store_picks_by_spec(tmp_path: Path) -> None:
    redis_store = open_store("redis://127.0.0.1:1/0")  # never connects: nothing need listen there
    disk_store = open_store(str(tmp_path / "store"))
    assert isinstance(redis_store, RedisStore)
    assert redis_store.blocking is True
    assert isinstance(disk_store, DiskStore)
    assert disk_store.blocking is False
    redis_store.close()
    disk_store.close()
