from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hooks import HookDriver, driven_addon
from oidc_fixtures import oidc_provider  # noqa: F401  (a fixture, used by name)
from procs import ManagedProcess
from redis_server import RedisServer
from redis_topologies import ClusterTopology, SentinelTopology, started
from stack import start_api, start_idp


@pytest.fixture
def redis_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisServer]:
    """A running redis-server. Options (``appendonly``, ``password``) by indirect parametrisation:
    ``@pytest.mark.parametrize("redis_server", [{"appendonly": True}], indirect=True)``."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), **getattr(request, "param", {}))
    server.start()
    yield server
    server.stop()


# A Redis Sentinel topology (master, replica, three sentinels) and a three-master Redis Cluster, one of each
# per test module that asks; modules that need a password define their own.
@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelTopology]:
    yield from started(SentinelTopology(tmp_path_factory.mktemp("sentinel")))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterTopology]:
    yield from started(ClusterTopology(tmp_path_factory.mktemp("cluster")))


# The demo identity provider and echo API, one of each per test module that asks.
@pytest.fixture(scope="module")
def idp() -> Iterator[ManagedProcess]:
    with start_idp() as process:
        yield process


@pytest.fixture(scope="module")
def api() -> Iterator[ManagedProcess]:
    with start_api() as process:
        yield process


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[HookDriver]:
    """The addon in a taddons context, configured as mitmdump would, its store under tmp_path."""
    with driven_addon(tmp_path) as driver:
        yield driver
