"""add / lease / release: one contract for every store kind, each against real processes.

The kinds: a diskcache directory, one redis-server, Redis Sentinel (a master, a replica, three sentinels) and
a three-master Redis Cluster. Each test opens its store as a proxy would, from the ``splittoken_store`` spec,
and a second instance on the same data stands for another proxy.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from redis_topologies import ClusterTopology, SentinelTopology
from splittoken.store import Store, StoreStats, open_store

TTL = 0.5  # lease ttl where a test waits for one to run out: short, so that the waiting costs little
ADDONS = Path(__file__).resolve().parent.parent / "addons"


def far() -> float:
    return time.time() + 600


def key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def owner() -> str:
    return secrets.token_hex(8)


@pytest.fixture(params=["disk", "redis", "sentinel", "cluster"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The ``splittoken_store`` value of an empty store of each kind."""
    if request.param == "disk":
        return str(tmp_path / "store")
    if request.param == "redis":
        return request.getfixturevalue("redis_server").url
    topology: SentinelTopology | ClusterTopology = request.getfixturevalue(request.param)
    # The topologies serve the whole module: empty them for each test.
    servers = [topology.master()] if isinstance(topology, SentinelTopology) else topology.nodes
    for server in servers:
        client = topology.client(server)
        client.flushall()
        client.close()
    return topology.url


@pytest.fixture
def open_same_store(spec: str) -> Iterator[Callable[[], Store]]:
    """Opens one more instance on the same data each call, as another proxy process would."""
    opened: list[Store] = []

    def open_one() -> Store:
        opened.append(open_store(spec))
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def store(open_same_store: Callable[[], Store]) -> Store:
    return open_same_store()


# --- add ---


def test_add_stores_only_when_absent(open_same_store: Callable[[], Store]) -> None:
    first, second = open_same_store(), open_same_store()
    assert first.add(key("jti"), b"first", far()) is True
    assert second.add(key("jti"), b"second", far()) is False
    assert second.get(key("jti")) == b"first"
    assert first.delete(key("jti")) is True
    assert second.add(key("jti"), b"second", far()) is True
    assert first.get(key("jti")) == b"second"


def test_add_shares_the_keyspace_of_put(store: Store) -> None:
    store.put(key("a"), b"put", far())
    assert store.add(key("a"), b"added", far()) is False
    assert store.get(key("a")) == b"put"
    assert store.add(key("b"), b"added", far()) is True
    store.put(key("b"), b"put", far())  # put overwrites whatever add made
    assert store.get(key("b")) == b"put"
    assert store.stats().records == 2


def test_add_takes_a_key_whose_record_expired(store: Store) -> None:
    assert store.add(key("a"), b"old", time.time() + 0.3) is True
    time.sleep(0.4)
    assert store.add(key("a"), b"new", far()) is True
    assert store.get(key("a")) == b"new"


def test_add_already_expired_stores_nothing(store: Store) -> None:
    assert store.add(key("a"), b"v", time.time() - 1) is False
    assert store.get(key("a")) is None
    assert store.stats() == StoreStats(records=0, expired=0)


# --- lease / release ---


def test_a_lease_is_exclusive_until_its_holder_releases_it(open_same_store: Callable[[], Store]) -> None:
    first, second = open_same_store(), open_same_store()
    a, b = owner(), owner()
    assert first.lease("refresh", a, 30) is True
    assert second.lease("refresh", b, 30) is False
    assert second.release("refresh", b) is False  # not the holder: nothing dropped
    assert second.lease("refresh", b, 30) is False
    assert first.lease("refresh", a, 30) is True  # the holder renews
    assert first.release("refresh", a) is True
    assert first.release("refresh", a) is False  # gone already
    assert second.lease("refresh", b, 30) is True


def test_renewal_keeps_another_owner_out_past_the_ttl(open_same_store: Callable[[], Store]) -> None:
    holder_store, rival_store = open_same_store(), open_same_store()
    holder, rival = owner(), owner()
    assert holder_store.lease("refresh", holder, TTL) is True
    taken_at = time.monotonic()
    while time.monotonic() - taken_at < 2 * TTL:  # twice the ttl: unrenewed, it would have run out
        time.sleep(TTL / 4)
        assert holder_store.lease("refresh", holder, TTL) is True
        assert rival_store.lease("refresh", rival, TTL) is False
    # The holder stops renewing (a slow refresh that gave up, a proxy that died): the lease runs out.
    time.sleep(TTL + 0.2)
    assert rival_store.lease("refresh", rival, TTL) is True


def test_an_expired_lease_is_taken_over_and_the_late_holder_cannot_touch_it(
    open_same_store: Callable[[], Store],
) -> None:
    late_store, successor_store = open_same_store(), open_same_store()
    late, successor = owner(), owner()
    assert late_store.lease("refresh", late, TTL) is True
    time.sleep(TTL + 0.2)
    assert successor_store.lease("refresh", successor, 30) is True
    # The holder that overslept learns that it lost: it can neither renew nor release its successor's lease.
    assert late_store.lease("refresh", late, TTL) is False
    assert late_store.release("refresh", late) is False
    assert late_store.lease("refresh", owner(), 30) is False  # still held, by the successor
    assert successor_store.release("refresh", successor) is True


def test_a_dead_holders_lease_frees_itself(open_same_store: Callable[[], Store]) -> None:
    dying = open_same_store()
    assert dying.lease("refresh", owner(), TTL) is True
    dying.close()  # the proxy is gone; nobody releases
    survivor = open_same_store()
    assert survivor.lease("refresh", owner(), TTL) is False
    time.sleep(TTL + 0.2)
    assert survivor.lease("refresh", owner(), TTL) is True


def test_leases_and_records_never_collide(store: Store) -> None:
    # A lease and a record of one name, and records whose keys look like the lease keyspace.
    names = [key("x"), "lease:" + key("x"), "-lease:" + key("x"), "splittoken-lease:" + key("x")]
    for name in names:
        store.put(name, name.encode(), far())
    holder = owner()
    assert store.lease(key("x"), holder, 30) is True
    assert [store.get(name) for name in names] == [name.encode() for name in names]
    assert store.stats().records == len(names)  # a lease is not a record
    assert store.delete(key("x")) is True  # forgetting the record leaves the lease held
    assert store.lease(key("x"), owner(), 30) is False
    assert store.release(key("x"), holder) is True
    assert store.get(names[1]) == names[1].encode()  # releasing the lease leaves the records
    assert store.add(key("x"), b"new", far()) is True
    assert store.lease(key("x"), owner(), 30) is True


@pytest.mark.parametrize(("holder", "ttl"), [("", 30), ("a", 0), ("a", -1)])
def test_a_lease_needs_an_owner_and_a_positive_ttl(store: Store, holder: str, ttl: float) -> None:
    with pytest.raises(ValueError, match="lease needs"):
        store.lease("refresh", holder, ttl)


# --- several processes at once ---

RACERS = 3
RACED_NAMES = 20

# Each racer opens the store, says it is ready, waits for the word, then tries to win every name.
RACE = f"""
import hashlib, json, secrets, sys, time
from splittoken.store import open_store
store = open_store(sys.argv[1])
me = secrets.token_hex(8)
print("ready", flush=True)
sys.stdin.readline()
names = range({RACED_NAMES})
jti = [hashlib.sha256(f"jti-{{i}}".encode()).hexdigest() for i in names]
added = [i for i in names if store.add(jti[i], b"v", time.time() + 60)]
leased = [i for i in names if store.lease(f"refresh-{{i}}", me, 30)]
print(json.dumps([added, leased]), flush=True)
"""


def test_racing_processes_agree_on_one_winner_per_name(spec: str) -> None:
    # Processes, not threads: for a shared diskcache directory, SQLite's file lock is what keeps add and
    # lease atomic, and that must hold between processes.
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, spec],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ | {"PYTHONPATH": str(ADDONS)},
            start_new_session=True,
        )
        for _ in range(RACERS)
    ]
    try:
        for racer in racers:
            assert racer.stdout is not None and racer.stdout.readline() == "ready\n"
        for racer in racers:  # as close to at once as the racers can be told
            assert racer.stdin is not None
            racer.stdin.write("go\n")
            racer.stdin.flush()
        outcomes = [json.loads(racer.communicate(timeout=60)[0]) for racer in racers]
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
                racer.wait()
    for won in zip(*outcomes, strict=True):  # the adds of every racer, then the leases
        assert sorted(i for names in won for i in names) == list(range(RACED_NAMES))
