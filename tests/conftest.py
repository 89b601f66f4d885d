from collections.abc import Iterator

import pytest

from redis_server import RedisServer


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
