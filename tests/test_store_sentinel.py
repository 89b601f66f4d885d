"""RedisStore on Redis Sentinel, against real processes: a master, a replica and three sentinels.

- a write is on the replica by the time put() returns (WAIT), and too few replicas fail it closed;
- the master crashing (SIGKILL) or freezing (SIGSTOP): every call fails fast with StoreUnavailable, never
  answers None for a record that was acknowledged, and the same store object follows the promoted replica
  within the issue's 30 s; a frozen master that wakes rejoins as a replica and has every acknowledged record;
- the record cache's change feed: a revocation through another store reaches it, and a failover that
  leaves the feed on a demoted master turns the cache dark until it follows the new one.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from procs import free_port
from redis_server import RedisServer
from redis_topologies import SERVICE, SentinelTopology, bounded_by, far, key, started, wait_until
from splittoken import seal
from splittoken.cache import RecordCache
from splittoken.errors import StoreUnavailable
from splittoken.redis_config import redact_redis_url
from splittoken.redis_store import RedisStore
from splittoken.seal import Record
from splittoken.store import open_store
from splittoken.vault import Vault

PASSWORD = "s3cret/p@ss:word"  # characters that need percent-encoding in a URL
TIMEOUT = 0.5  # store timeout: short, so that calls during a failover cost little test time
CALL_BOUND = 2 * TIMEOUT + 0.5  # loose: "bounded", not "how fast"
bounded = bounded_by(CALL_BOUND)
FAILOVER_BOUND = 30.0  # the bound: the store follows the new master without a restart within 30 s


def on_server(topology: SentinelTopology, server: RedisServer, name: str) -> bytes | None:
    """What ``server`` itself holds for the record ``name``: a replica answers reads too."""
    client = topology.client(server)
    try:
        return client.get(RedisStore.PREFIX + name)
    finally:
        client.close()


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelTopology]:
    yield from started(SentinelTopology(tmp_path_factory.mktemp("sentinel"), password=PASSWORD))


@pytest.fixture
def store(sentinel: SentinelTopology) -> Iterator[RedisStore]:
    store = RedisStore(sentinel.url, timeout=TIMEOUT)
    yield store
    store.close()


# --- replication before the answer ---


def test_every_write_is_on_the_replica_when_the_call_returns(
    sentinel: SentinelTopology, store: RedisStore
) -> None:
    replica = sentinel.replica()
    for i in range(20):
        name = key(f"handle-{i}")
        store.put(name, b"record %d" % i, far())
        assert on_server(sentinel, replica, name) == b"record %d" % i  # no wait: WAIT did it
        assert store.delete(name) is True
        assert on_server(sentinel, replica, name) is None  # a revocation is never undone by a failover
    assert store.add(key("jti"), b"seen", far()) is True
    assert on_server(sentinel, replica, key("jti")) == b"seen"
    assert store.lease("refresh", "holder", 30) is True
    client = sentinel.client(replica)
    assert client.get(RedisStore.LEASE_PREFIX + "refresh") == b"holder"
    assert store.release("refresh", "holder") is True
    assert client.get(RedisStore.LEASE_PREFIX + "refresh") is None
    client.close()


def test_fewer_replicas_than_wanted_fail_every_write_closed(sentinel: SentinelTopology) -> None:
    store = RedisStore(sentinel.url, timeout=TIMEOUT, min_replicas=2)  # there is one
    writes: list[Callable[[], object]] = [
        lambda: store.put(key("a"), b"v", far()),
        lambda: store.add(key("b"), b"v", far()),
        lambda: store.delete(key("a")),
        lambda: store.lease("refresh", "holder", 30),
        lambda: store.release("refresh", "holder"),
    ]
    for write in writes:
        with pytest.raises(StoreUnavailable, match="reached 1 of 2 replica"):
            bounded(write)
    assert store.get(key("b")) == b"v"  # the master kept it; only the answer was refused
    store.close()


def test_a_silent_replica_fails_writes_closed_and_reads_go_on(
    sentinel: SentinelTopology, store: RedisStore
) -> None:
    store.put(key("before"), b"v", far())  # the automatic count has seen the replica online
    replica = sentinel.replica()
    replica.pause()
    try:
        with pytest.raises(StoreUnavailable, match="reached 0 of 1 replica"):
            bounded(lambda: store.put(key("during"), b"v", far()))
        # The master still lists the frozen replica as online, so asking again changes nothing.
        with pytest.raises(StoreUnavailable, match="reached 0 of 1 replica"):
            bounded(lambda: store.put(key("during"), b"v", far()))
        assert bounded(lambda: store.get(key("before"))) == b"v"
    finally:
        replica.resume()
    store.put(key("after"), b"v", far())
    assert on_server(sentinel, replica, key("after")) == b"v"


def test_the_store_opens_while_no_sentinel_answers() -> None:
    hosts = ",".join(f"127.0.0.1:{free_port()}" for _ in range(3))
    store = RedisStore(f"redis+sentinel://:{quote(PASSWORD, safe='')}@{hosts}/splittoken", timeout=TIMEOUT)
    for call in (lambda: store.get(key("a")), lambda: store.put(key("a"), b"v", far()), store.stats):
        with pytest.raises(StoreUnavailable, match="No master found") as raised:
            bounded(call)
        assert "s3cret" not in str(raised.value)
    store.close()


def test_rediss_speaks_tls_to_the_sentinels(sentinel: SentinelTopology) -> None:
    # This sentinel speaks plain TCP: a TLS client cannot find the master through it. Its handshake waits out
    # a timeout; then calls fail at once for a timeout's length.
    url = f"rediss+sentinel://127.0.0.1:{sentinel.sentinel_ports[0]}/{SERVICE}"
    store = RedisStore(url, timeout=TIMEOUT)
    with pytest.raises(StoreUnavailable, match="No master found") as raised:
        store.get(key("a"))
    assert "SSLConnection" in str(raised.value)  # redis-py's account of the sentinel it tried
    with pytest.raises(StoreUnavailable, match="timed out moments ago"):
        bounded(lambda: store.get(key("a")))
    store.close()


# --- failover ---


@pytest.fixture
def fresh_sentinel(tmp_path: Path) -> Iterator[SentinelTopology]:
    """A topology of its own: a failover leaves it changed."""
    yield from started(SentinelTopology(tmp_path, password=PASSWORD))


def fail_over(
    topology: SentinelTopology, store: RedisStore, crash: Callable[[RedisServer], None]
) -> tuple[dict[str, bytes], RedisServer, RedisServer]:
    """Write records, ``crash`` the master, and call the store until it answers again: every call fails
    fast, none reads an acknowledged record as unknown, and the writes that return are kept. Returns every
    acknowledged record, the old master and the new one."""
    acknowledged = {key(f"before-{i}"): os.urandom(16) for i in range(20)}
    for name, value in acknowledged.items():
        store.put(name, value, far())
    old = topology.master()
    crash(old)
    crashed = time.monotonic()
    first = next(iter(acknowledged))
    refused = 0
    for attempt in itertools.count():
        elapsed = time.monotonic() - crashed
        assert elapsed < FAILOVER_BOUND, f"no answer {elapsed:.1f}s after the crash"
        try:
            value = bounded(lambda: store.get(first))
        except StoreUnavailable:
            refused += 1
        else:
            assert value == acknowledged[first], "an acknowledged record read as unknown or changed"
            break
        name, value = key(f"during-{attempt}"), os.urandom(16)
        try:
            bounded(lambda: store.put(name, value, far()))  # noqa: B023 (called at once)
        except StoreUnavailable:
            refused += 1
        else:
            acknowledged[name] = value
        time.sleep(0.05)
    assert refused > 0, "the failover went unnoticed: no call was refused"
    new = topology.wait_for_failover(old)
    # Shown with -s, for the note: what a client of this store saw.
    print(
        f"{crash.__name__} of the master: {refused} calls refused (StoreUnavailable, each within "
        f"{CALL_BOUND}s); answers again {elapsed:.1f}s after it, from the promoted replica"
    )

    def every_record_reads_back() -> bool:
        for name, value in acknowledged.items():
            try:
                found = bounded(lambda: store.get(name))  # noqa: B023 (called at once)
            except StoreUnavailable:
                return False  # e.g. a pooled connection to the old master, dropped: asked again
            assert found == value, "an acknowledged record read as unknown or changed"
        return True

    wait_until("every acknowledged record reads back", every_record_reads_back, FAILOVER_BOUND)
    return acknowledged, old, new


def test_a_killed_master_loses_no_acknowledged_record(fresh_sentinel: SentinelTopology) -> None:
    store = RedisStore(fresh_sentinel.url, timeout=TIMEOUT)
    acknowledged, _, new = fail_over(fresh_sentinel, store, RedisServer.kill)  # nothing flushed
    # The same store object writes to the new master, which has no replica left: automatically, 0 wanted.
    wait_until("writes reach the new master", lambda: put_succeeds(store, key("after"), b"v"))
    assert on_server(fresh_sentinel, new, key("after")) == b"v"
    # Every acknowledged record, and maybe a write refused for want of a replica's acknowledgement that the
    # replica had received all the same (the caller was told it failed: fail closed, nothing lost).
    assert store.stats().records >= len(acknowledged) + 1
    store.close()


def test_a_frozen_master_loses_nothing_and_rejoins_as_a_replica(fresh_sentinel: SentinelTopology) -> None:
    topology = fresh_sentinel
    store = RedisStore(topology.url, timeout=TIMEOUT)
    # Frozen: connections stay open and nothing answers; the sentinels call it down all the same.
    acknowledged, old, new = fail_over(topology, store, RedisServer.pause)
    old.resume()  # still believes it is master, with its data: the sentinels demote it (after about 8 s)
    wait_until("the old master is a replica in sync", lambda: replicates(topology, old, new))
    strict = RedisStore(topology.url, timeout=TIMEOUT, min_replicas=1)
    wait_until("writes reach the rejoined replica", lambda: put_succeeds(strict, key("after"), b"v"))
    assert on_server(topology, old, key("after")) == b"v"
    for name, value in acknowledged.items():
        assert on_server(topology, old, name) == value
        assert store.get(name) == value
    strict.close()
    store.close()


def replicates(topology: SentinelTopology, replica: RedisServer, master: RedisServer) -> bool:
    client = topology.client(replica)
    try:
        state = client.info("replication")
    finally:
        client.close()
    return (
        state["role"] == "slave"
        and state["master_port"] == master.port
        and state["master_link_status"] == "up"
    )


def put_succeeds(store: RedisStore, name: str, value: bytes) -> bool:
    try:
        store.put(name, value, far())
    except StoreUnavailable:
        return False
    return True


# --- the record cache's change feed ---

HANDLE = "h" * 43


def cached_vault(url: str) -> tuple[Vault, RecordCache]:
    vault = Vault(RedisStore(url, timeout=TIMEOUT), cache_size=10)
    assert vault.cache is not None, "no record cache behind Sentinel"
    wait_until("the cache is live", lambda: vault.cache is not None and vault.cache.live)
    return vault, vault.cache


def cached(vault: Vault, cache: RecordCache) -> bool:
    """Whether the vault finds HANDLE and its cache holds it now (a read just after a write's own
    invalidation is not kept: asked again)."""
    return vault.find_now(HANDLE) is not None and len(cache) == 1


def test_a_revocation_through_another_store_reaches_the_cache(sentinel: SentinelTopology) -> None:
    writer, _ = cached_vault(sentinel.url)
    reader, cache = cached_vault(sentinel.url)
    try:
        writer.keep_now(HANDLE, Record("access", "h.p", far(), subject="alice"))
        wait_until("the record is cached", lambda: cached(reader, cache))
        assert writer.forget_now(HANDLE)
        revoked = time.monotonic()
        wait_until("the revocation is heard", lambda: len(cache) == 0, timeout=1)
        print(f"revocation heard {1000 * (time.monotonic() - revoked):.1f} ms after it")
        assert reader.find_now(HANDLE) is None
    finally:
        writer.close(), reader.close()


def test_a_failover_empties_the_cache_and_it_follows_the_new_master(fresh_sentinel: SentinelTopology) -> None:
    """A failover the sentinels order (SENTINEL FAILOVER): the old master lives on as a replica. What the
    cache held goes; once the feed follows the new master, a revocation made there reaches the cache."""
    topology = fresh_sentinel
    reader, cache = cached_vault(topology.url)
    writer = Vault(RedisStore(topology.url, timeout=TIMEOUT), cache_size=0)
    try:
        writer.keep_now(HANDLE, Record("access", "h.p", far(), subject="alice"))
        wait_until("the record is cached", lambda: cached(reader, cache))
        old = topology.master()
        on_sentinels(topology, [("SENTINEL", "FAILOVER", SERVICE)], only_first=True)
        new = topology.wait_for_failover(old)
        wait_until("the cache is emptied", lambda: len(cache) == 0, timeout=5)
        wait_until("the record is cached again", lambda: cached(reader, cache), timeout=FAILOVER_BOUND)
        assert feed_port(reader) == new.port
        wait_until("the writer reaches the new master", lambda: _forgets(writer))
        wait_until("the revocation on the new master is heard", lambda: len(cache) == 0, timeout=1)
        assert reader.find_now(HANDLE) is None
    finally:
        writer.close(), reader.close()


def test_a_feed_on_a_master_the_sentinels_no_longer_name_is_not_trusted(
    fresh_sentinel: SentinelTopology,
) -> None:
    """Split brain, as a partition makes it: the sentinels have moved to another master while the old one,
    cut off from them, still says it is master and keeps the feed's connection open. A revocation made on
    the new master never reaches that feed; the cache must stop answering, not serve the revoked handle."""
    topology = fresh_sentinel
    reader, cache = cached_vault(topology.url)
    writer = None
    try:
        reader.keep_now(HANDLE, Record("access", "h.p", far(), subject="alice"))
        wait_until(
            "the replica has it", lambda: on_server(topology, topology.replica(), seal.store_key(HANDLE))
        )
        wait_until("the record is cached", lambda: cached(reader, cache))
        old, new = topology.master(), topology.replica()
        topology.client(new).execute_command("REPLICAOF", "NO", "ONE")  # a second master
        commands: list[tuple[str, ...]] = [
            ("SENTINEL", "REMOVE", SERVICE),
            ("SENTINEL", "MONITOR", SERVICE, "127.0.0.1", str(new.port), "2"),
        ]
        if topology.password:
            commands.append(("SENTINEL", "SET", SERVICE, "auth-pass", topology.password))
        on_sentinels(topology, commands)
        assert topology.client(old).info("replication")["role"] == "master"  # nothing told it otherwise
        writer = Vault(RedisStore(topology.url, timeout=TIMEOUT), cache_size=0)  # another proxy, started now
        wait_until("the writer reaches the new master", lambda: _forgets(writer))
        assert on_server(topology, old, seal.store_key(HANDLE)) is not None  # the feed's server never heard
        wait_until("the cache is emptied", lambda: len(cache) == 0, timeout=1)
        assert reader.find_now(HANDLE) is None
        assert feed_port(reader) == new.port
    finally:
        reader.close()
        if writer is not None:
            writer.close()


def on_sentinels(
    topology: SentinelTopology, commands: list[tuple[str, ...]], only_first: bool = False
) -> None:
    for port in topology.sentinel_ports[: 1 if only_first else None]:
        client = redis.Redis(port=port, socket_timeout=2)
        try:
            for command in commands:
                client.execute_command(*command)
        finally:
            client.close()


def feed_port(vault: Vault) -> int:
    """The port of the master the vault's store now asks for (the sentinels' answer)."""
    return vault.store._redis.connection_pool.get_master_address()[1]  # type: ignore[attr-defined]


def _forgets(vault: Vault) -> bool:
    try:
        return vault.forget_now(HANDLE)
    except StoreUnavailable:
        return False


# --- URLs ---


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://:hunter2@127.0.0.1:26379",
        "redis+sentinel://:hunter2@127.0.0.1:26379/",
        "redis+sentinel://:hunter2@127.0.0.1:26379/mymaster/zero",
        "redis+sentinel://:hunter2@127.0.0.1:26379/mymaster/0/extra",
        "redis+sentinel://:hunter2@127.0.0.1:notaport/mymaster",
        "redis+sentinel://:hunter2@127.0.0.1:26379,127.0.0.1:99999/mymaster",
        "redis+sentinel://:hunter2@127.0.0.1:26379,:26380/mymaster",
        "redis+sentinel://:hunter2@/mymaster",
        "redis+sentinel://:hunter2/x@127.0.0.1:26379/mymaster",  # a raw / in the password
        "redis+sentinel://:hun#ter2@127.0.0.1:26379/mymaster",  # a raw # in the password
        "redis+sentinel://:hunter2@127.0.0.1:26379/mymaster?no_such_option=1",
        "redis+sentinel://:hunter2@127.0.0.1:26379/mymaster?db=zero",
        "redis+sentinal://:hunter2@127.0.0.1:26379/mymaster",
    ],
)
def test_a_malformed_url_is_a_value_error_without_the_password(url: str) -> None:
    with pytest.raises(ValueError, match="invalid Redis URL") as raised:
        RedisStore(url)
    assert "hunter2" not in str(raised.value)
    assert "ter2" not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        ("redis+sentinel://h1:1,h2:2/mymaster/0", "redis+sentinel://h1:1,h2:2/mymaster/0"),
        ("redis+sentinel://:pw@h1:1,h2:2/mymaster/0", "redis+sentinel://:***@h1:1,h2:2/mymaster/0"),
        ("rediss+sentinel://user:p@w,x@h1:1,h2:2/m", "rediss+sentinel://user:***@h1:1,h2:2/m"),
    ],
)
def test_redact_a_sentinel_url(url: str, safe: str) -> None:
    assert redact_redis_url(url) == safe


def test_open_store_takes_sentinel_urls() -> None:
    for scheme in ("redis+sentinel", "rediss+sentinel"):
        store = open_store(f"{scheme}://:pw@127.0.0.1:1,127.0.0.1:2/mymaster/3")  # never connects
        assert isinstance(store, RedisStore)
        assert store.blocking is True
        assert repr(store) == f"RedisStore('{scheme}://:***@127.0.0.1:1,127.0.0.1:2/mymaster/3')"
        store.close()
    with pytest.raises(ValueError, match="min_replicas must be 0 or more"):
        open_store("redis+sentinel://127.0.0.1:1/mymaster", min_replicas=-1)
