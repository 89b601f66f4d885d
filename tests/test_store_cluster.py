"""RedisStore on Redis Cluster, against a real three-master cluster made by ``redis-cli --cluster create``.

- records and leases spread over the slots of all three masters, and stats count them across masters;
- a master killed (SIGKILL) or frozen (SIGSTOP) makes the calls for its slots fail fast with StoreUnavailable,
  never None, while the other masters go on answering; restarted, it serves its records again to the same
  store object;
- the record cache's change feed hears a revocation on any master; a master it does not hear (a killed one,
  a node that joins) turns the cache dark until the feed hears every master again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from procs import free_port
from redis_server import RedisServer
from redis_topologies import ClusterTopology, bounded_by, far, key, started, wait_until
from splittoken.cache import RecordCache
from splittoken.errors import StoreUnavailable
from splittoken.redis_config import redact_redis_url
from splittoken.redis_store import RedisStore
from splittoken.seal import Record, store_key
from splittoken.store import StoreStats, open_store
from splittoken.vault import Vault

PASSWORD = "s3cret/p@ss:word"  # characters that need percent-encoding in a URL
TIMEOUT = 0.5  # store timeout: short, so that calls to a dead master cost little test time
CALL_BOUND = 2 * TIMEOUT + 0.5  # loose: "bounded", not "how fast"
bounded = bounded_by(CALL_BOUND)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterTopology]:
    yield from started(ClusterTopology(tmp_path_factory.mktemp("cluster"), password=PASSWORD))


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[ClusterTopology]:
    """A cluster of its own, for a test that breaks a master."""
    yield from started(ClusterTopology(tmp_path, password=PASSWORD))


def test_records_and_leases_spread_over_every_master(cluster: ClusterTopology) -> None:
    store = RedisStore(cluster.url, timeout=TIMEOUT)
    names = [key(f"handle-{i}") for i in range(60)]
    for name in names:
        store.put(name, b"v", far())
    for i in range(30):
        assert store.lease(f"refresh-{i}", "holder", 30) is True
    held = [cluster.keys_on(node) for node in cluster.nodes]  # what each master holds, by its own account
    records = {RedisStore.PREFIX.encode() + name.encode() for name in names}
    leases = {RedisStore.LEASE_PREFIX.encode() + f"refresh-{i}".encode() for i in range(30)}
    for keys in held:
        assert keys & records, "a master holds no record"
        assert keys & leases, "a master holds no lease"
    assert set().union(*held) == records | leases
    assert store.stats() == StoreStats(records=60, expired=0)  # counted over all masters, leases apart
    for i in range(30):
        assert store.release(f"refresh-{i}", "holder") is True
    for name in names:
        assert store.delete(name) is True
    assert store.stats() == StoreStats(records=0, expired=0)
    store.close()


def record_calls(store: RedisStore, name: str) -> list[Callable[[], object]]:
    return [
        lambda: store.get(name),
        lambda: store.put(name, b"w", far()),
        lambda: store.add(name, b"w", far()),
        lambda: store.delete(name),
    ]


def lease_calls(store: RedisStore, name: str) -> list[Callable[[], object]]:
    return [lambda: store.lease(name, "holder", 30), lambda: store.release(name, "holder")]


def test_a_killed_master_fails_its_own_slots_only(fresh_cluster: ClusterTopology) -> None:
    cluster = fresh_cluster
    store = RedisStore(cluster.url, timeout=TIMEOUT)
    names = [key(f"handle-{i}") for i in range(30)]
    for name in names:
        store.put(name, b"v", far())
    victim = cluster.nodes[0]
    # A record and a lease of one name hash apart (each key by its whole name): placed one by one.
    records_on_victim = {name for name in names if cluster.node_for(RedisStore.PREFIX + name) is victim}
    leases_on_victim = {name for name in names if cluster.node_for(RedisStore.LEASE_PREFIX + name) is victim}
    assert 0 < len(records_on_victim) < len(names) and 0 < len(leases_on_victim) < len(names)

    def only_the_victim_fails() -> None:
        for name in names:
            if name in records_on_victim:
                for call in record_calls(store, name):
                    with pytest.raises(StoreUnavailable):
                        bounded(call)
            else:
                assert bounded(lambda: store.get(name)) == b"v"  # noqa: B023 (called at once)
            if name in leases_on_victim:
                for call in lease_calls(store, name):
                    with pytest.raises(StoreUnavailable):
                        bounded(call)
            else:
                assert all(bounded(call) is True for call in lease_calls(store, name))

    victim.kill()
    only_the_victim_fails()  # at once: its connections are refused
    cluster.wait_until_failed(victim)
    only_the_victim_fails()  # the others have marked it failed: its slots are not served

    # Back with its append-only file: the same store object reads its records again.
    victim.start()
    for node in cluster.nodes:
        cluster.wait_until_served(node)
    wait_until("the restarted master's records read back", lambda: all_read(store, records_on_victim))
    store.close()


def all_read(store: RedisStore, names: Iterable[str]) -> bool:
    try:
        return all(store.get(name) == b"v" for name in names)
    except StoreUnavailable:
        return False


def test_a_frozen_master_does_not_slow_the_others(fresh_cluster: ClusterTopology) -> None:
    cluster = fresh_cluster
    store = RedisStore(cluster.url, timeout=TIMEOUT)
    names = [key(f"handle-{i}") for i in range(30)]
    for name in names:
        store.put(name, b"v", far())
    victim = cluster.nodes[1]
    on_victim = [name for name in names if cluster.node_for(RedisStore.PREFIX + name) is victim]
    elsewhere = [name for name in names if name not in on_victim]
    victim.pause()  # accepts connections, never answers
    try:
        for name in on_victim[:3]:
            with pytest.raises(StoreUnavailable):
                bounded(lambda: store.get(name))  # noqa: B023 (called at once)
            # Right after a timeout on the frozen master, the others answer at once: the store fails fast
            # for the frozen master's slots only.
            assert all(bounded(lambda: store.get(other)) == b"v" for other in elsewhere)  # noqa: B023
    finally:
        victim.resume()
    cluster.wait_until_served(victim)
    wait_until("the thawed master's records read back", lambda: all_read(store, on_victim))
    store.close()


# --- the record cache's change feed ---

HANDLES = [f"{i:02d}" + "h" * 41 for i in range(12)]


def cached_vault(url: str) -> tuple[Vault, RecordCache]:
    vault = Vault(RedisStore(url, timeout=TIMEOUT), cache_size=len(HANDLES))
    assert vault.cache is not None, "no record cache on a Cluster"
    wait_until("the cache is live", lambda: vault.cache is not None and vault.cache.live)
    return vault, vault.cache


def all_cached(vault: Vault, cache: RecordCache) -> bool:
    """Whether every handle is found and held in the cache now (a read just after a write's own
    invalidation is not kept: asked again)."""
    return all(vault.find_now(h) is not None for h in HANDLES) and len(cache) == len(HANDLES)


def test_a_revocation_on_any_master_reaches_the_cache(cluster: ClusterTopology) -> None:
    writer = Vault(RedisStore(cluster.url, timeout=TIMEOUT), cache_size=0)
    reader, cache = cached_vault(cluster.url)
    try:
        for handle in HANDLES:
            writer.keep_now(handle, Record("access", "h.p", far(), subject="alice"))
        homes = {cluster.node_for(RedisStore.PREFIX + store_key(h)).port for h in HANDLES}
        assert len(homes) == len(cluster.nodes), "the handles do not spread over every master"
        wait_until("every record is cached", lambda: all_cached(reader, cache))
        for left, handle in reversed(list(enumerate(HANDLES))):
            assert writer.forget_now(handle)
            wait_until("the revocation is heard", lambda: len(cache) == left, timeout=1)  # noqa: B023
            assert reader.find_now(handle) is None
    finally:
        writer.close(), reader.close()


def test_a_killed_master_darkens_the_cache_until_it_is_back(fresh_cluster: ClusterTopology) -> None:
    """The feed cannot hear a dead master, whose keys nobody can write either: the cache goes dark, joins
    read the store (the dead master's slots fail, the others answer), and it is live again once every
    master is."""
    cluster = fresh_cluster
    reader, cache = cached_vault(cluster.url)
    try:
        for handle in HANDLES:
            reader.keep_now(handle, Record("access", "h.p", far(), subject="alice"))
        wait_until("every record is cached", lambda: all_cached(reader, cache))
        victim = cluster.nodes[0]
        on_victim = {h for h in HANDLES if cluster.node_for(RedisStore.PREFIX + store_key(h)) is victim}
        assert 0 < len(on_victim) < len(HANDLES)
        victim.kill()
        wait_until("the cache is dark and empty", lambda: not cache.live and len(cache) == 0, timeout=2)
        for handle in HANDLES:
            if handle in on_victim:
                with pytest.raises(StoreUnavailable):
                    bounded(lambda: reader.find_now(handle))  # noqa: B023 (called at once)
            else:
                assert bounded(lambda: reader.find_now(handle)) is not None  # noqa: B023
        assert not cache.live
        victim.start()
        for node in cluster.nodes:
            cluster.wait_until_served(node)
        wait_until("the cache is live again", lambda: cache.live)
        wait_until("every record is cached again", lambda: all_cached(reader, cache))
    finally:
        reader.close()


def test_a_master_that_joins_darkens_the_cache_until_the_feed_hears_it(
    fresh_cluster: ClusterTopology,
) -> None:
    cluster = fresh_cluster
    reader, cache = cached_vault(cluster.url)
    newcomer_dir = cluster.nodes[0].directory.parent / "newcomer"
    newcomer_dir.mkdir()
    bus_port = free_port()
    newcomer = RedisServer(
        newcomer_dir, password=cluster.password, extra_args=[
            "--cluster-enabled", "yes", "--cluster-config-file", str(newcomer_dir / "nodes.conf"),
            "--cluster-port", str(bus_port), "--cluster-node-timeout", "1000",
            "--cluster-require-full-coverage", "no", "--masterauth", cluster.password or "",
        ],
    )  # fmt: skip
    newcomer.start()
    try:
        for handle in HANDLES:
            reader.keep_now(handle, Record("access", "h.p", far(), subject="alice"))
        wait_until("every record is cached", lambda: all_cached(reader, cache))
        first = cluster.client(cluster.nodes[0])
        try:
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", str(newcomer.port), str(bus_port))
        finally:
            first.close()
        # A master with no slots yet: the feed must hear it before anything moves there. The cache is dark
        # only until the feed has connected to it too, a moment: what shows is that it was emptied.
        wait_until("the cache is emptied", lambda: len(cache) == 0, timeout=5)
        heard = ("127.0.0.1", newcomer.port)

        def hears_the_newcomer() -> bool:
            feed = cache._changes._connections  # type: ignore[attr-defined]
            return cache.live and heard in {(c.host, c.port) for c in feed}

        # Live meanwhile only while every master it asks agrees on the masters, as the news spreads.
        wait_until("the cache hears the newcomer too", hears_the_newcomer, timeout=15)
    finally:
        reader.close()
        newcomer.stop()


def test_the_store_opens_while_no_node_answers() -> None:
    hosts = ",".join(f"127.0.0.1:{free_port()}" for _ in range(3))
    store = RedisStore(f"redis+cluster://:{quote(PASSWORD, safe='')}@{hosts}", timeout=TIMEOUT)
    for call in (*record_calls(store, key("a")), *lease_calls(store, key("a")), store.stats):
        with pytest.raises(StoreUnavailable) as raised:
            bounded(call)
        assert "s3cret" not in str(raised.value)
    store.close()


def test_the_store_opens_before_the_cluster_and_then_uses_it(tmp_path: Path) -> None:
    topology = ClusterTopology(tmp_path, password=PASSWORD)
    store = RedisStore(topology.url, timeout=TIMEOUT)  # the proxy starts first
    with pytest.raises(StoreUnavailable, match="Redis Cluster cannot be connected"):
        bounded(lambda: store.get(key("a")))
    topology.start()
    try:
        wait_until("the store reaches the new cluster", lambda: put_succeeds(store, key("a")))
        assert store.get(key("a")) == b"v"
    finally:
        topology.stop()
        store.close()


def put_succeeds(store: RedisStore, name: str) -> bool:
    try:
        store.put(name, b"v", far())
    except StoreUnavailable:
        return False
    return True


def test_rediss_speaks_tls_to_the_nodes(cluster: ClusterTopology) -> None:
    # These nodes speak plain TCP: a TLS client cannot read the slot map from them.
    store = RedisStore(cluster.url.replace("redis+cluster://", "rediss+cluster://"), timeout=TIMEOUT)
    with pytest.raises(StoreUnavailable, match="Redis Cluster cannot be connected"):
        store.get(key("a"))
    store.close()


# --- URLs ---


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://:hunter2@",
        "redis+cluster://:hunter2@127.0.0.1:6379,",
        "redis+cluster://:hunter2@127.0.0.1:notaport",
        "redis+cluster://:hunter2@127.0.0.1:6379,127.0.0.1:99999",
        "redis+cluster://:hunter2@127.0.0.1:6379/0",
        "redis+cluster://:hunter2@127.0.0.1:6379/1",
        "redis+cluster://:hunter2@127.0.0.1:6379?db=1",
        "redis+cluster://:hunter2@127.0.0.1:6379?no_such_option=1",
        "redis+cluster://:hunter2/x@127.0.0.1:6379",  # a raw / in the password
        "rediss+clutser://:hunter2@127.0.0.1:6379",
    ],
)
def test_a_malformed_url_is_a_value_error_without_the_password(url: str) -> None:
    with pytest.raises(ValueError, match="invalid Redis URL") as raised:
        RedisStore(url)
    assert "hunter2" not in str(raised.value)


def test_cluster_writes_are_not_waited_for() -> None:
    with pytest.raises(ValueError, match="Redis Cluster writes are not waited for"):
        RedisStore("redis+cluster://127.0.0.1:6379", min_replicas=1)


def test_redact_a_cluster_url() -> None:
    assert redact_redis_url("rediss+cluster://user:p@w@h1:1,h2:2") == "rediss+cluster://user:***@h1:1,h2:2"


def test_open_store_takes_cluster_urls() -> None:
    for scheme in ("redis+cluster", "rediss+cluster"):
        store = open_store(f"{scheme}://:pw@127.0.0.1:1,127.0.0.1:2")  # never connects
        assert isinstance(store, RedisStore)
        assert store.blocking is True
        assert repr(store) == f"RedisStore('{scheme}://:***@127.0.0.1:1,127.0.0.1:2')"
        store.close()
