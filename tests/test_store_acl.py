"""The README's Redis ACL, applied to real servers: every store call and the change feed work under it.

The lists are read from the README itself, so the documentation cannot drift from what the store sends.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from redis_server import RedisServer
from redis_topologies import ClusterTopology, far, key, wait_until
from splittoken.redis_store import RedisStore
from splittoken.seal import Record
from splittoken.vault import Vault

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
PASSWORD = "acl-pw"
HANDLE = "a" * 43


def documented_rules() -> list[str]:
    (line,) = re.findall(r"^\s*ACL SETUSER splittoken (.+)$", README, re.MULTILINE)
    return [rule.replace(">PASSWORD", f">{PASSWORD}") for rule in line.split()]


def documented_cluster_rules() -> list[str]:
    (rules,) = re.findall(r"Redis Cluster needs `([^`]+)` besides", README)
    return rules.split()


def grant(server: RedisServer, rules: list[str], password: str | None = None) -> None:
    admin = redis.Redis(port=server.port, password=password, socket_timeout=2)
    try:
        admin.execute_command("ACL", "SETUSER", "splittoken", *rules)
    finally:
        admin.close()


def exercise(url: str) -> None:
    """Every call the store makes, and a record cache whose feed confirms and hears a revocation."""
    store = RedisStore(url, timeout=1.0)
    try:
        name = key("acl")
        store.put(name, b"v", far())
        assert store.get(name) == b"v"
        assert store.add(key("acl-new"), b"v", far()) is True
        assert store.lease("acl-lease", "me", 30) is True
        assert store.release("acl-lease", "me") is True
        assert store.stats().records >= 2
        store.purge()
        assert store.delete(name) is True
    finally:
        store.close()
    reader = Vault(RedisStore(url, timeout=1.0), cache_size=4)
    writer = Vault(RedisStore(url, timeout=1.0), cache_size=0)
    cache = reader.cache
    try:
        assert cache is not None
        wait_until("the cache is live under the ACL", lambda: cache.live)
        writer.keep_now(HANDLE, Record("access", "h.p", far()))
        wait_until("the record is cached", lambda: reader.find_now(HANDLE) and len(cache) == 1)
        assert writer.forget_now(HANDLE)
        wait_until("the revocation is heard", lambda: len(cache) == 0, timeout=2)
        time.sleep(0.1)  # several confirmations
        assert cache.live, "the change feed's confirmations are refused under the ACL"
    finally:
        reader.close(), writer.close()


def test_one_server_under_the_documented_acl(redis_server: RedisServer) -> None:
    grant(redis_server, documented_rules())
    exercise(f"redis://splittoken:{PASSWORD}@127.0.0.1:{redis_server.port}/0")
    # ROLE, which the feed asks behind Sentinel, is in the list too.
    client = redis.Redis(port=redis_server.port, username="splittoken", password=PASSWORD)
    try:
        assert client.execute_command("ROLE")[0] in (b"master", "master")
    finally:
        client.close()


@pytest.fixture
def acl_cluster(cluster: ClusterTopology) -> Iterator[ClusterTopology]:
    for node in cluster.nodes:
        grant(node, documented_rules() + documented_cluster_rules(), cluster.password)
    yield cluster
    for node in cluster.nodes:
        admin = cluster.client(node)
        try:
            admin.execute_command("ACL", "DELUSER", "splittoken")
        finally:
            admin.close()


def test_a_cluster_under_the_documented_acl(acl_cluster: ClusterTopology) -> None:
    hosts = ",".join(f"127.0.0.1:{node.port}" for node in acl_cluster.nodes)
    exercise(f"redis+cluster://splittoken:{PASSWORD}@{hosts}")
