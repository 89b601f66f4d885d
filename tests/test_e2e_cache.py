"""The record cache end to end: two real mitmdumps on one store (a diskcache directory, a real redis-server),
each answering joins from its own memory.

- A revocation, through one proxy (RFC 7009) or with the admin CLI, is refused by the proxy that made it at
  once and by the other within the 100 ms that issue 12 allows, although the other had the handle cached.
- Redis killed while handles are cached: the proxy answers 503 from then on, never a join, and recovers on
  its own once Redis is back.

Every process is started on free loopback ports and stopped by its own PID.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests

from procs import ManagedProcess
from redis_server import RedisServer
from splittoken.seal import store_key
from stack import CLIENT, REVOKE_PATH, ROOT, TOKEN_PATH, Proxy, start_proxy

pytestmark = pytest.mark.e2e

# Issue 12: "refused … by every other proxy on the same store within 100 ms".
PROPAGATION_BOUND = 0.100
HTTP_TIMEOUT = 15
RECOVERY_BOUND = 10.0  # a hang guard for the recovery after Redis is back, not a bound of the issue
WARM_JOINS = 5

StartPair = Callable[[str], tuple[Proxy, Proxy]]


@pytest.fixture
def start_pair(idp: ManagedProcess, api: ManagedProcess) -> Iterator[StartPair]:
    """Two mitmdumps with default options on one store, started side by side (each takes ~1 s to import)."""
    started: list[Proxy] = []

    def start(store: str) -> tuple[Proxy, Proxy]:
        assert idp.url and api.url
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(start_proxy, idp.url, api.url, store=store) for _ in range(2)]
            # Every one that did start must be stopped, even when the other failed.
            started.extend(future.result() for future in futures if future.exception() is None)
            a, b = (future.result() for future in futures)
        return a, b

    yield start
    for proxy in started:
        proxy.stop()
        print(f"--- mitmdump {proxy.process.pid} ---\n{proxy.output()}")  # shown when the test failed


def issue_handle(proxy: Proxy) -> str:
    answer = requests.post(
        proxy.idp_url + TOKEN_PATH, data={"grant_type": "client_credentials", **CLIENT}, timeout=HTTP_TIMEOUT
    )
    assert answer.status_code == 200, answer.text
    handle = answer.json()["access_token"]
    assert "." not in handle
    return handle


def call_api(session: requests.Session, proxy: Proxy, handle: str) -> requests.Response:
    headers = {"Authorization": f"Bearer {handle}"}
    return session.get(proxy.api_url + "/orders", headers=headers, timeout=HTTP_TIMEOUT)


def received(api: ManagedProcess) -> list[str]:
    """Every Authorization header the echo API has received (the proxy redacts what the API echoes)."""
    return requests.get(f"{api.url}/_stats", timeout=HTTP_TIMEOUT).json()["authorizations"]


def assert_joined(api: ManagedProcess, since: int, handle: str, joins: int) -> None:
    """The API received ``joins`` requests since the ``since``-th, each with the JWT cut for ``handle``."""
    forwarded = received(api)[since:]
    assert len(forwarded) == joins
    assert all(a.startswith("Bearer eyJ") and a.endswith("." + handle) for a in forwarded)


def assert_refused(response: requests.Response) -> None:
    assert response.status_code == 401, response.text
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def warm(session: requests.Session, api: ManagedProcess, proxies: tuple[Proxy, ...], handle: str) -> None:
    since = len(received(api))
    for proxy in proxies:
        for _ in range(WARM_JOINS):
            response = call_api(session, proxy, handle)
            assert response.status_code == 200, response.text
    assert_joined(api, since, handle, WARM_JOINS * len(proxies))


def propagation(
    session: requests.Session, api: ManagedProcess, proxy: Proxy, handle: str, revoked_at: float
) -> float:
    """Seconds from ``revoked_at`` to the first refusal of ``handle`` by ``proxy``, asking as fast as one
    client can; every answer before it is a join (a cached record still trusted)."""
    since, joins = len(received(api)), 0
    while (response := call_api(session, proxy, handle)).status_code == 200:
        joins += 1
        assert time.monotonic() - revoked_at < RECOVERY_BOUND, "the revocation never arrived"
    took = time.monotonic() - revoked_at
    assert_refused(response)
    assert_joined(api, since, handle, joins)
    return took


def redis_reads(server: RedisServer) -> int:
    with redis.Redis(host="127.0.0.1", port=server.port) as admin:
        return int(admin.info("commandstats").get("cmdstat_get", {}).get("calls", 0))


def revoke_with_the_admin_cli(store: str, handle: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "splittoken_admin.py"), "--store", store, "revoke", handle],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "revoked", done.stdout + done.stderr


@pytest.mark.parametrize("kind", ["disk", "redis"])
def test_a_revocation_reaches_the_other_proxy_within_100_ms(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, api: ManagedProcess, start_pair: StartPair
) -> None:
    server: RedisServer | None = request.getfixturevalue("redis_server") if kind == "redis" else None
    store = server.url if server else str(tmp_path / "store")
    a, b = start_pair(store)
    session = requests.Session()

    # B answers from memory: Redis is not read for its joins; in the directory, a record made to expire early
    # behind the store's back (only its expiry column changed, which no log entry announces) is still joined.
    cached = issue_handle(a)
    warm(session, api, (b,), cached)
    if server:
        for _ in range(5):  # a join while a push is still unread on the feed reads Redis: cached next time
            reads = redis_reads(server)
            warm(session, api, (b,), cached)
            if redis_reads(server) == reads:
                break
        assert redis_reads(server) == reads
    else:
        with contextlib.closing(sqlite3.connect(Path(store) / "cache.db")) as db, db:
            expired = db.execute("UPDATE Cache SET expire_time = 0 WHERE key = ?", (store_key(cached),))
            assert expired.rowcount == 1
        assert_refused(call_api(session, a, cached))  # A reads the store: gone
        warm(session, api, (b,), cached)

    # RFC 7009 through A: A refuses at once, B within the bound.
    handle = issue_handle(a)
    warm(session, api, (a, b), handle)
    answer = requests.post(a.idp_url + REVOKE_PATH, data={"token": handle, **CLIENT}, timeout=HTTP_TIMEOUT)
    revoked_at = time.monotonic()
    assert answer.status_code == 200, answer.text
    assert_refused(call_api(session, a, handle))
    through_a = propagation(session, api, b, handle, revoked_at)

    # The admin CLI, a process of its own: both proxies within the bound.
    handle = issue_handle(b)
    warm(session, api, (a, b), handle)
    revoke_with_the_admin_cli(store, handle)
    revoked_at = time.monotonic()
    by_cli = [propagation(session, api, proxy, handle, revoked_at) for proxy in (a, b)]

    print(f"{kind}: RFC 7009 through A reached B in {through_a * 1000:.1f} ms; the admin CLI's revocation "
          f"reached A in {by_cli[0] * 1000:.1f} ms, B in {by_cli[1] * 1000:.1f} ms")  # fmt: skip
    assert through_a <= PROPAGATION_BOUND
    assert max(by_cli) <= PROPAGATION_BOUND


@pytest.mark.parametrize("redis_server", [{"appendonly": True}], indirect=True)
def test_redis_killed_while_handles_are_cached_is_503_never_a_join(
    redis_server: RedisServer, api: ManagedProcess, start_pair: StartPair
) -> None:
    a, b = start_pair(redis_server.url)
    session = requests.Session()
    handles = [issue_handle(a) for _ in range(3)]
    for handle in handles:
        warm(session, api, (b,), handle)
    for _ in range(5):  # a join while a push is still unread on the feed reads Redis: cached the next time
        reads = redis_reads(redis_server)
        for handle in handles:
            warm(session, api, (b,), handle)
        if redis_reads(redis_server) == reads:
            break
    assert redis_reads(redis_server) == reads  # every one cached

    seen = len(received(api))
    redis_server.kill()
    for _ in range(5):
        for handle in handles:
            response = call_api(session, b, handle)
            assert response.status_code == 503, response.text
            assert response.json()["error"] == "temporarily_unavailable"
            assert int(response.headers["Retry-After"]) > 0
            assert handle not in response.text and "eyJ" not in response.text
    assert len(received(api)) == seen

    # Back, with its data (append-only file): the same proxy joins again, reading Redis at first.
    redis_server.start()
    deadline = time.monotonic() + RECOVERY_BOUND
    since = len(received(api))
    while (response := call_api(session, b, handles[0])).status_code != 200:
        assert response.status_code == 503, response.text
        assert time.monotonic() < deadline, "no recovery"
        time.sleep(0.05)
    assert_joined(api, since, handles[0], 1)
