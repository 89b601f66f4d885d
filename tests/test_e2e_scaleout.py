"""Scale-out end to end: several real mitmdump processes sharing one store, against one demo identity
provider and one echo API.

- two proxies on one real Redis (one server, Sentinel, Cluster): a handle issued by one is honoured, refreshed
  and revoked by the other;
- a Redis outage: the proxy fails closed (503 + Retry-After, nothing leaked, nothing forwarded) within a
  bounded time, and the same processes recover on their own once Redis is back;
- three proxies on one host sharing a diskcache directory, including a concurrent burst;
- one refresh per cluster: 20 concurrent refreshes through two proxies reach the IdP once, on every kind of
  shared store, with an IdP slower than the lease; a proxy killed holding the lease is taken over;
- Sentinel: a handle survives the master's SIGKILL and failover (503s meanwhile, never a 401), and a write
  short of the replicas wanted is answered 503.

Every process is started on free loopback ports and stopped by its own PID.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from procs import ManagedProcess
from redis_server import RedisServer
from redis_topologies import ClusterTopology, SentinelTopology, started
from stack import CLIENT, REVOKE_PATH, TOKEN_PATH, Proxy, start_proxy

pytestmark = pytest.mark.e2e

# A compact JWS as it would leak: three base64url segments, the header starting with '{"' (eyJ).
JWS_RE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# Anything shaped like a handle: a JWS signature (342 characters for RS256) or a refresh handle (43).
HANDLE_LIKE_RE = re.compile(r"[A-Za-z0-9_-]{40,}")
CERTS_PATH = "/realms/demo/protocol/openid-connect/certs"
# Generous bounds: they catch a hang or a proxy that never recovers, not a slow machine.
STORE_TIMEOUT_MS = 300  # splittoken_store_timeout_ms in the outage test
REQUEST_BOUND = 5.0  # seconds one request may take while the store is down
RECOVERY_BOUND = 10.0  # seconds from Redis answering again to the first successful API call
HTTP_TIMEOUT = 15  # requests' own timeout: longer than any bound, so a hang fails an assert, not the run


StartProxies = Callable[..., list[Proxy]]


@pytest.fixture
def start_proxies(idp: ManagedProcess, api: ManagedProcess) -> Iterator[StartProxies]:
    """Start n mitmdump processes on one store, in parallel (each takes ~1 s to import mitmproxy)."""
    started: list[Proxy] = []

    def start(n: int, store: str, options: Mapping[str, str] | None = None) -> list[Proxy]:
        assert idp.url and api.url
        batch: list[Proxy] = []
        failure: BaseException | None = None
        # What the API received is read from the echo API's answer, which the proxy redacts by default.
        options = {"splittoken_redact_api_responses": "false", **(options or {})}
        with ThreadPoolExecutor(n) as pool:
            futures = [
                pool.submit(start_proxy, idp.url, api.url, store=store, options=options) for _ in range(n)
            ]
            for future in as_completed(futures):
                try:
                    batch.append(future.result())
                except BaseException as e:  # keep collecting: every one that did start must be stopped
                    failure = failure or e
        started.extend(batch)
        if failure:
            raise failure
        return batch

    yield start
    for proxy in started:
        proxy.stop()
        # Shown by pytest only when the test failed: the proxies' own account of what went wrong.
        print(f"--- mitmdump {proxy.process.pid} ({proxy.idp_url}, {proxy.api_url}) ---\n{proxy.output()}")


# ------------------------------------------------------------------------------------------------------------
# HTTP helpers


def login(proxy: Proxy) -> requests.Response:
    data = {"grant_type": "password", "username": "alice", "password": "alice-pw", **CLIENT}
    return requests.post(proxy.idp_url + TOKEN_PATH, data=data, timeout=HTTP_TIMEOUT)


def handles(response: requests.Response) -> tuple[str, str]:
    """The access and refresh handles of a successful token answer, checked to be handles, not tokens."""
    assert response.status_code == 200, response.text
    assert not JWS_RE.search(response.text), "a JWS reached the client"
    body = response.json()
    access, refresh = body["access_token"], body["refresh_token"]
    assert "." not in access and "." not in refresh
    return access, refresh


def refresh(proxy: Proxy, refresh_handle: str, **fields: str) -> requests.Response:
    """``fields``: more form fields, e.g. the demo IdP's ``delay_ms``, or a ``client_secret`` of a thief."""
    data = {"grant_type": "refresh_token", "refresh_token": refresh_handle, **CLIENT, **fields}
    return requests.post(proxy.idp_url + TOKEN_PATH, data=data, timeout=HTTP_TIMEOUT)


def revoke(proxy: Proxy, handle: str) -> requests.Response:
    return requests.post(proxy.idp_url + REVOKE_PATH, data={"token": handle, **CLIENT}, timeout=HTTP_TIMEOUT)


def call_api(proxy: Proxy, handle: str) -> requests.Response:
    headers = {"Authorization": f"Bearer {handle}"}
    return requests.get(proxy.api_url + "/orders", headers=headers, timeout=HTTP_TIMEOUT)


def forwarded_jwt(response: requests.Response, handle: str) -> str:
    """The JWT the echo API received for ``handle``: a bearer token whose signature is the handle."""
    assert response.status_code == 200, response.text
    values = [value for name, value in response.json()["headers"] if name.lower() == "authorization"]
    assert len(values) == 1, values
    scheme, _, token = values[0].partition(" ")
    assert scheme == "Bearer"
    assert JWS_RE.fullmatch(token), token[:20]
    assert token.rsplit(".", 1)[1] == handle
    return token


def echo_count(api: ManagedProcess) -> int:
    return requests.get(f"{api.url}/_stats", timeout=HTTP_TIMEOUT).json()["requests"]


def idp_stats(idp: ManagedProcess) -> dict[str, Any]:
    return requests.get(f"{idp.url}/_stats", timeout=HTTP_TIMEOUT).json()


def idp_refreshes(idp: ManagedProcess) -> int:
    return idp_stats(idp)["token"].get("refresh_token", 0)


def timed(call: Callable[[], requests.Response]) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def assert_unavailable(response: requests.Response, *secrets: str) -> None:
    """A fail-closed answer: 503 + Retry-After, an RFC error body and nothing a client could use."""
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    assert response.json()["error"] == "temporarily_unavailable"
    assert set(response.json()) <= {"error", "error_description"}
    everything = response.text + "".join(f"{k}: {v}\n" for k, v in response.headers.items())
    assert not JWS_RE.search(everything), "a JWS leaked in a 503"
    # Covers the handle a failed split would have issued too, which the test cannot know in advance.
    assert not HANDLE_LIKE_RE.search(everything), "something handle-like leaked in a 503"
    for secret in secrets:
        assert secret not in everything


# ------------------------------------------------------------------------------------------------------------
# Stores several proxies share


def store_of(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The ``splittoken_store`` of the kind ``request.param`` names, empty, for proxies to share."""
    if request.param == "disk":
        return str(tmp_path / "store")
    if request.param == "redis":
        return request.getfixturevalue("redis_server").url
    topology: SentinelTopology | ClusterTopology = request.getfixturevalue(request.param)
    return topology.url


@pytest.fixture(params=["disk", "redis", "sentinel", "cluster"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return store_of(request, tmp_path)


@pytest.fixture(params=["redis", "sentinel", "cluster"])
def redis_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return store_of(request, tmp_path)


# The lease works the same on Sentinel and Cluster as on one Redis: its holder dying is shown on these.
@pytest.fixture(params=["disk", "redis"])
def lease_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return store_of(request, tmp_path)


# ------------------------------------------------------------------------------------------------------------
# Two proxies, one Redis: one server, Sentinel or Cluster


def test_two_proxies_share_handles_through_redis(
    idp: ManagedProcess, api: ManagedProcess, redis_store: str, start_proxies: StartProxies
) -> None:
    # No grace: a rotated refresh handle must die at once, on every proxy.
    a, b = start_proxies(2, redis_store, {"splittoken_refresh_grace": "0"})

    access, refresh_handle = handles(login(a))

    # Split by A, re-joined by B: the JWT is the IdP's own, intact.
    token = forwarded_jwt(call_api(b, access), access)
    signing_key = jwt.PyJWKClient(f"{idp.url}{CERTS_PATH}").get_signing_key_from_jwt(token)
    claims = jwt.decode(token, signing_key.key, algorithms=["RS256"], audience="account")
    assert claims["preferred_username"] == "alice"

    # Refreshed through A: the old refresh handle is refused by B at once, without asking the IdP.
    access2, refresh2 = handles(refresh(a, refresh_handle))
    assert (access2, refresh2) != (access, refresh_handle)
    before = idp_refreshes(idp)
    stale = refresh(b, refresh_handle)
    assert stale.status_code == 400, stale.text
    assert stale.json()["error"] == "invalid_grant"
    assert idp_refreshes(idp) == before, "B forwarded a forgotten refresh handle to the IdP"
    forwarded_jwt(call_api(b, access2), access2)
    access3, _ = handles(refresh(b, refresh2))

    # Revoked on B: A refuses the access handle at once, and the API never sees the request.
    forwarded_jwt(call_api(a, access3), access3)
    revocations = idp_stats(idp)["revoke"]
    assert revoke(b, access3).status_code == 200
    assert idp_stats(idp)["revoke"] == revocations + 1  # B sent the IdP the real token
    seen = echo_count(api)
    refused = call_api(a, access3)
    assert refused.status_code == 401, refused.text
    assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]
    assert echo_count(api) == seen


# ------------------------------------------------------------------------------------------------------------
# Redis outage


@pytest.mark.parametrize("redis_server", [{"appendonly": True}], indirect=True)
def test_redis_outage_fails_closed_and_recovers(
    idp: ManagedProcess, api: ManagedProcess, redis_server: RedisServer, start_proxies: StartProxies
) -> None:
    (proxy,) = start_proxies(1, redis_server.url, {"splittoken_store_timeout_ms": str(STORE_TIMEOUT_MS)})
    access, refresh_handle = handles(login(proxy))
    forwarded_jwt(call_api(proxy, access), access)
    spare_access, spare_refresh = handles(login(proxy))  # used only after the outage
    pid = proxy.process.pid

    durations: list[float] = []

    def during_outage(call: Callable[[], requests.Response]) -> requests.Response:
        response, took = timed(call)
        durations.append(took)
        assert took < REQUEST_BOUND, f"a request took {took:.2f}s while the store was down"
        return response

    def every_route_fails_closed() -> None:
        seen, refreshes = echo_count(api), idp_refreshes(idp)
        # Token route: the IdP answers with fresh tokens the proxy cannot store; the client gets none.
        assert_unavailable(during_outage(lambda: login(proxy)), access, refresh_handle)
        # Refresh: the handle cannot be swapped for the refresh token, so the IdP is not even asked.
        assert_unavailable(during_outage(lambda: refresh(proxy, refresh_handle)), access, refresh_handle)
        assert idp_refreshes(idp) == refreshes
        # API route with a valid handle: nothing reaches the API.
        assert_unavailable(during_outage(lambda: call_api(proxy, access)), access, refresh_handle)
        assert echo_count(api) == seen
        # Revocation cannot forget the handle: the client must learn that and retry.
        assert_unavailable(during_outage(lambda: revoke(proxy, spare_access)), access, spare_access)

    # A hung Redis (accepts connections, never answers): bounded by splittoken_store_timeout_ms.
    redis_server.pause()
    try:
        every_route_fails_closed()
        # Concurrent clients too: store calls run in worker threads, so they queue behind each other.
        seen = echo_count(api)
        with ThreadPoolExecutor(12) as pool:
            burst = list(pool.map(lambda _: during_outage(lambda: call_api(proxy, access)), range(12)))
        for response in burst:
            assert_unavailable(response, access)
        assert echo_count(api) == seen
    finally:
        redis_server.resume()
    # After a timeout the store fails fast for one timeout's length (so a hung Redis cannot queue requests):
    # recovery from a hang takes at most that long.
    time.sleep(STORE_TIMEOUT_MS / 1000)
    forwarded_jwt(call_api(proxy, access), access)

    # A stopped Redis (connections refused).
    redis_server.stop()
    every_route_fails_closed()
    print(f"slowest request while Redis was hung or down: {max(durations):.3f}s (bound {REQUEST_BOUND}s)")

    # Back on the same port, data reloaded from the append-only file; start() returns once it answers PING.
    redis_server.start()
    back = time.monotonic()
    while True:
        response = call_api(proxy, access)
        recovery = time.monotonic() - back
        if response.status_code == 200 or recovery > RECOVERY_BOUND:
            break
        assert response.status_code == 503, response.text  # refused for the outage, never as unknown
        time.sleep(0.05)
    print(f"recovery after Redis came back: {recovery:.3f}s (bound {RECOVERY_BOUND}s)")
    assert response.status_code == 200, f"no recovery within {RECOVERY_BOUND}s: {response.text}"
    forwarded_jwt(response, access)

    # The same process, not a restarted one; and every handle stored before the outage works again.
    assert proxy.process.pid == pid and proxy.process.proc.poll() is None
    forwarded_jwt(call_api(proxy, spare_access), spare_access)
    new_access, _ = handles(refresh(proxy, refresh_handle))
    forwarded_jwt(call_api(proxy, new_access), new_access)
    handles(refresh(proxy, spare_refresh))
    fresh_access, _ = handles(login(proxy))
    forwarded_jwt(call_api(proxy, fresh_access), fresh_access)


# ------------------------------------------------------------------------------------------------------------
# Several proxies on one host, one diskcache directory


def test_proxies_on_one_host_share_a_disk_store(
    idp: ManagedProcess, tmp_path: Path, start_proxies: StartProxies
) -> None:
    proxies = start_proxies(3, str(tmp_path / "store"))

    # Issued by any, honoured by every other.
    issued = [handles(login(proxy)) for proxy in proxies]
    for i, (access, _) in enumerate(issued):
        for proxy in proxies[:i] + proxies[i + 1 :]:
            forwarded_jwt(call_api(proxy, access), access)

    # A refresh on one is seen by the others. Within the default grace, a late refresh of the rotated
    # handle on another proxy gets the very same answer, without a second call to the IdP.
    p0, p1, p2 = proxies
    access, refresh_handle = issued[0]
    new_access, new_refresh = handles(refresh(p0, refresh_handle))
    forwarded_jwt(call_api(p1, new_access), new_access)
    before = idp_refreshes(idp)
    assert handles(refresh(p1, refresh_handle)) == (new_access, new_refresh)
    assert idp_refreshes(idp) == before
    latest_access, _ = handles(refresh(p2, new_refresh))
    forwarded_jwt(call_api(p0, latest_access), latest_access)

    # A concurrent burst: 60 log-ins (writes) each followed by an API call (read) on another proxy.
    def login_then_call(i: int) -> tuple[float, float]:
        issuer, user = proxies[i % 3], proxies[(i + 1) % 3]
        response, took_login = timed(lambda: login(issuer))
        access, _ = handles(response)
        response, took_call = timed(lambda: call_api(user, access))
        forwarded_jwt(response, access)
        return took_login, took_call

    started = time.monotonic()
    with ThreadPoolExecutor(12) as pool:
        timings = list(pool.map(login_then_call, range(60)))
    elapsed = time.monotonic() - started
    slowest_login = max(t[0] for t in timings)
    slowest_call = max(t[1] for t in timings)
    print(
        f"burst: 60 log-ins + 60 API calls over 3 proxies in {elapsed:.2f}s; "
        f"slowest log-in {slowest_login:.3f}s, slowest API call {slowest_call:.3f}s"
    )


# ------------------------------------------------------------------------------------------------------------
# One refresh per cluster: a lease in the store on each refresh handle

LEASE = {"splittoken_refresh_lease": "1"}  # seconds: short, so that a lease running out costs little
SLOW_MS = "2500"  # the authorization server's refresh answer, longer than the lease: it must be renewed
BURST = 20  # concurrent refreshes, half through each of two proxies


def at_once(calls: list[Callable[[], requests.Response]]) -> list[requests.Response]:
    """Every call from a thread of its own, released together."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], requests.Response]) -> requests.Response:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def test_concurrent_refreshes_through_two_proxies_reach_the_idp_once(
    idp: ManagedProcess, shared_store: str, start_proxies: StartProxies
) -> None:
    a, b = start_proxies(2, shared_store, LEASE)
    access, refresh_handle = handles(login(a))
    before = idp_stats(idp)["token"]

    # 20 clients' tabs at once, half through each proxy, the authorization server slower than the lease; and
    # among them a thief with the handle and a guessed secret.
    calls = [
        functools.partial(refresh, (a, b)[i % 2], refresh_handle, delay_ms=SLOW_MS) for i in range(BURST)
    ]
    calls.append(functools.partial(refresh, b, refresh_handle, client_secret="guessed"))
    *answers, stolen = at_once(calls)

    after = idp_stats(idp)["token"]
    # One refresh of the client's, and the thief's, which the authorization server refused (wrong secret).
    assert after["refresh_token"] - before["refresh_token"] == 2
    assert after["errors"] - before["errors"] == 1
    issued = {handles(answer) for answer in answers}
    assert len(issued) == 1, f"{len(issued)} different answers"
    ((new_access, new_refresh),) = issued
    assert new_access != access and new_refresh != refresh_handle
    # The thief got the server's verdict, and nothing of the client's answer.
    assert stolen.status_code == 401, stolen.text
    assert stolen.json()["error"] == "invalid_client"
    assert new_access not in stolen.text and new_refresh not in stolen.text

    for proxy in (a, b):
        forwarded_jwt(call_api(proxy, new_access), new_access)
    handles(refresh(b, new_refresh))  # the chain goes on from the shared answer, on either proxy


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.02)


def test_a_proxy_killed_holding_the_lease_is_taken_over(
    idp: ManagedProcess, lease_store: str, start_proxies: StartProxies
) -> None:
    a, b = start_proxies(2, lease_store, LEASE)
    _, refresh_handle = handles(login(a))
    before = idp_refreshes(idp)
    with ThreadPoolExecutor(2) as pool:
        # A holds the lease while the authorization server takes its time (longer than the lease)…
        first = pool.submit(refresh, a, refresh_handle, delay_ms=SLOW_MS)
        wait_for(lambda: idp_refreshes(idp) == before + 1, "A's refresh reached the IdP")
        # …another tab of the same client asks B, which waits for A's answer…
        second = pool.submit(refresh, b, refresh_handle)
        # …and A dies: its lease is never renewed or released.
        os.kill(a.process.pid, signal.SIGKILL)
        with pytest.raises(requests.ConnectionError):
            first.result()
        # Once the lease runs out, B takes over and refreshes; the server answers B first (A's request, still
        # sleeping there, comes too late for the single-use refresh token).
        new_access, _ = handles(second.result())
    assert idp_refreshes(idp) == before + 2
    forwarded_jwt(call_api(b, new_access), new_access)


# ------------------------------------------------------------------------------------------------------------
# Sentinel: a failover loses no handle a client holds

FAILOVER_BOUND = 30.0  # seconds from the master's SIGKILL to answers from the new one (the bound)


@pytest.fixture
def fresh_sentinel(tmp_path: Path) -> Iterator[SentinelTopology]:
    """A topology of its own: a failover leaves it changed."""
    yield from started(SentinelTopology(tmp_path))


def until_answered(call: Callable[[], requests.Response], *secrets: str) -> tuple[requests.Response, int]:
    """Call until the answer is no 503, each 503 a clean one (nothing a client could use, never a 401);
    returns the answer and how many 503s came first."""
    crashed = time.monotonic()
    unavailable = 0
    while (response := call()).status_code == 503:
        assert_unavailable(response, *secrets)
        unavailable += 1
        assert time.monotonic() - crashed < FAILOVER_BOUND, "the proxy did not follow the new master"
        time.sleep(0.05)
    return response, unavailable


def test_a_handle_survives_a_sentinel_failover(
    fresh_sentinel: SentinelTopology, start_proxies: StartProxies
) -> None:
    (proxy,) = start_proxies(1, fresh_sentinel.url, {"splittoken_store_timeout_ms": "300"})
    pid = proxy.process.pid
    # Answered only once the replica has the records (WAIT; automatically 1 while a replica is online).
    access, refresh_handle = handles(login(proxy))
    old = fresh_sentinel.master()
    old.kill()  # SIGKILL: whatever it had not sent its replica is gone
    crashed = time.monotonic()

    response, unavailable = until_answered(lambda: call_api(proxy, access), access, refresh_handle)
    recovered = time.monotonic() - crashed
    forwarded_jwt(response, access)  # the handle the client received before the crash, not a 401
    assert unavailable > 0, "the failover went unnoticed: no request was answered 503"
    assert fresh_sentinel.wait_for_failover(old) is not old
    # Writes too (the new master has no replica left: automatically, none is waited for).
    response, _ = until_answered(lambda: refresh(proxy, refresh_handle), access, refresh_handle)
    new_access, _ = handles(response)
    forwarded_jwt(call_api(proxy, new_access), new_access)
    assert proxy.process.pid == pid and proxy.process.proc.poll() is None  # the same process, no restart
    # Shown with -s, for the note: what the client saw.
    print(f"master SIGKILL: {unavailable} API calls answered 503, then 200 after {recovered:.1f}s")


def test_a_write_short_of_its_replicas_is_answered_503(
    sentinel: SentinelTopology, start_proxies: StartProxies
) -> None:
    # Two replicas wanted, one there: a log-in whose handles the store cannot keep safe gets none.
    (proxy,) = start_proxies(1, sentinel.url, {"splittoken_min_replicas": "2"})
    assert_unavailable(login(proxy))
