"""End to end: real mitmdump processes in reverse-proxy mode, the demo identity provider, the echo API and
real HTTP clients. Every process is started on free loopback ports and stopped by its own PID."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jwt
import pytest
import requests

from procs import ManagedProcess, free_port
from stack import CLIENT, REVOKE_PATH, ROOT, TOKEN_PATH, Proxy, start_idp, start_proxy

pytestmark = pytest.mark.e2e

JWS_RE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


@pytest.fixture
def store(tmp_path: Path) -> str:
    return str(tmp_path / "store")


# The tests read what the API received from the echo API's answer, which the proxy redacts by default.
SHOW_WHAT_THE_API_GOT = {"splittoken_redact_api_responses": "false"}


@pytest.fixture
def proxy(idp: ManagedProcess, api: ManagedProcess, store: str) -> Iterator[Proxy]:
    started = start_proxy(url(idp), url(api), store=store, options=SHOW_WHAT_THE_API_GOT)
    yield started
    started.stop()


def url(process: ManagedProcess) -> str:
    assert process.url
    return process.url


def login(proxy: Proxy, **form: str) -> requests.Response:
    data = {"grant_type": "password", "username": "alice", "password": "alice-pw", **CLIENT, **form}
    return requests.post(proxy.idp_url + TOKEN_PATH, data=data, timeout=10)


def call_api(proxy: Proxy, authorization: str | None, path: str = "/anything") -> requests.Response:
    headers = {"Authorization": authorization} if authorization is not None else {}
    return requests.get(proxy.api_url + path, headers=headers, timeout=10)


def forwarded_authorization(response: requests.Response) -> str:
    assert response.status_code == 200, response.text
    values = [v for k, v in response.json()["headers"] if k.lower() == "authorization"]
    assert len(values) == 1
    return values[0]


def echo_count(api: ManagedProcess) -> int:
    return requests.get(url(api) + "/_stats", timeout=5).json()["requests"]


def idp_stats(idp: ManagedProcess) -> dict:
    return requests.get(url(idp) + "/_stats", timeout=5).json()


def verify_with_idp(idp: ManagedProcess, token: str) -> dict:
    """The token is exactly what the identity provider signed: any changed byte breaks the signature."""
    keys = jwt.PyJWKClient(url(idp) + "/realms/demo/protocol/openid-connect/certs")
    key = keys.get_signing_key_from_jwt(token)
    return jwt.decode(token, key.key, algorithms=["RS256"], options={"verify_aud": False})


def claims_visible(value: str) -> bool:
    """Whether a client could read claims out of ``value`` (what jwt.io would do)."""
    for part in value.split("."):
        try:
            decoded = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        except ValueError:
            continue
        if b"alice@example.com" in decoded or b'"sub"' in decoded:
            return True
    return False


# ---------------------------------------------------------------------------------------------------------
# Issue 2: the split-token core


def test_token_response_is_split_and_api_gets_the_original_jwt(idp, api, proxy: Proxy) -> None:
    direct = requests.post(
        url(idp) + TOKEN_PATH, data={"grant_type": "client_credentials", **CLIENT}, timeout=10
    ).json()
    response = requests.post(
        proxy.idp_url + TOKEN_PATH, data={"grant_type": "client_credentials", **CLIENT}, timeout=10
    )
    assert response.status_code == 200
    body = response.json()
    handle = body["access_token"]
    assert not JWS_RE.search(response.text)
    assert not claims_visible(handle)
    assert set(body) == set(direct)  # every other field kept
    assert body["token_type"] == "Bearer" and body["expires_in"] == direct["expires_in"]
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"

    for authorization in (f"Bearer {handle}", handle, f"bearer  {handle}"):
        forwarded = forwarded_authorization(call_api(proxy, authorization))
        scheme, token = forwarded.split(" ")
        assert scheme == "Bearer"
        assert token.rsplit(".", 1)[1] == handle
        assert verify_with_idp(idp, token)["azp"] == "demo-client"


def test_unknown_handle_is_refused_without_contacting_the_api(api, proxy: Proxy) -> None:
    before = echo_count(api)
    for authorization in ("Bearer AAAAunknownhandle", "Bearer " + "x" * 342, "nope"):
        response = call_api(proxy, authorization)
        assert response.status_code == 401
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge
        assert response.json()["error"] == "invalid_token"
    missing = call_api(proxy, None)
    assert missing.status_code == 401
    assert (
        missing.headers["WWW-Authenticate"].startswith("Bearer")
        and "error=" not in missing.headers["WWW-Authenticate"]
    )
    malformed = call_api(proxy, "Basic dXNlcjpwdw==")
    assert malformed.status_code == 400 and malformed.json()["error"] == "invalid_request"
    assert echo_count(api) == before


def test_token_endpoint_errors_pass_unchanged(idp, proxy: Proxy) -> None:
    bad = {"grant_type": "client_credentials", "client_id": "demo-client", "client_secret": "wrong"}
    direct = requests.post(url(idp) + TOKEN_PATH, data=bad, timeout=10)
    through = requests.post(proxy.idp_url + TOKEN_PATH, data=bad, timeout=10)
    assert through.status_code == direct.status_code == 401
    assert through.content == direct.content
    unsupported = requests.post(
        proxy.idp_url + TOKEN_PATH, data={"grant_type": "magic", **CLIENT}, timeout=10
    )
    assert unsupported.status_code == 400 and unsupported.json()["error"] == "unsupported_grant_type"


def test_form_encoded_token_responses_are_split(idp, proxy: Proxy) -> None:
    response = requests.post(
        proxy.idp_url + TOKEN_PATH,
        data={"grant_type": "password", "username": "bob", "password": "bob-pw", **CLIENT},
        headers={"Accept": "application/x-www-form-urlencoded"},
        timeout=10,
    )
    assert response.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    assert not JWS_RE.search(response.text)
    fields = dict(p.split("=", 1) for p in response.text.split("&"))
    token = forwarded_authorization(call_api(proxy, f"Bearer {fields['access_token']}")).split(" ")[1]
    assert verify_with_idp(idp, token)["email"] == "bob@example.com"


def test_large_tokens_work_end_to_end(idp, proxy: Proxy) -> None:
    body = login(proxy, pad="20000").json()
    token = forwarded_authorization(call_api(proxy, f"Bearer {body['access_token']}")).split(" ")[1]
    assert len(token) > 20000
    assert len(verify_with_idp(idp, token)["pad"]) == 20000


def test_handles_survive_a_restart_and_are_shared_between_processes(idp, api, store: str) -> None:
    first = start_proxy(url(idp), url(api), store=store)
    try:
        handle = login(first).json()["access_token"]
        assert call_api(first, f"Bearer {handle}").status_code == 200
    finally:
        first.stop()
    restarted = start_proxy(url(idp), url(api), store=store)
    second = start_proxy(url(idp), url(api), store=store)
    try:
        assert call_api(restarted, f"Bearer {handle}").status_code == 200
        assert call_api(second, f"Bearer {handle}").status_code == 200
        other = login(second).json()["access_token"]
        assert call_api(restarted, f"Bearer {other}").status_code == 200
    finally:
        restarted.stop()
        second.stop()


@contextlib.contextmanager
def forward_proxy(idp, api, tmp_path: Path, api_filter: str) -> Iterator[tuple[Proxy, str, dict[str, str]]]:
    """mitmdump with a regular (forward) listener beside the reverse ones; yields the proxy, a handle issued
    through its token listener, and the ``proxies`` setting that sends requests through the forward one."""
    regular_port = free_port()
    started = start_proxy(
        url(idp), url(api), store=str(tmp_path / "store"),
        options={**SHOW_WHAT_THE_API_GOT, **({"splittoken_api_filter": api_filter} if api_filter else {})},
        extra_args=["--mode", f"regular@{regular_port}"],
    )  # fmt: skip
    try:
        started.process.wait_for(re.compile(rf"listening at .*:{regular_port}\b"))
        handle = login(started).json()["access_token"]
        yield started, handle, {"http": f"http://127.0.0.1:{regular_port}"}
    finally:
        started.stop()


@pytest.mark.parametrize("joined", [True, False])
def test_regular_proxy_mode_joins_only_where_the_api_filter_says(
    idp, api, tmp_path: Path, joined: bool
) -> None:
    api_port = url(api).rsplit(":", 1)[1]
    api_filter = rf"~d ^127\.0\.0\.1$ & ~u :{api_port}/" if joined else ""
    with forward_proxy(idp, api, tmp_path, api_filter) as (_, handle, proxies):
        headers = {"Authorization": f"Bearer {handle}"}
        response = requests.get(url(api) + "/forward", headers=headers, proxies=proxies, timeout=10)
        forwarded = forwarded_authorization(response)
        assert (forwarded != f"Bearer {handle}") is joined
        assert bool(JWS_RE.search(forwarded)) is joined


def test_look_alike_hosts_get_no_jwt(idp, api, tmp_path: Path) -> None:
    """``~d`` is a regex search: an anchored filter keeps api.example.com.evil.net from getting the JWT."""
    with forward_proxy(idp, api, tmp_path, r"~d ^api\.example\.com$") as (started, handle, proxies):
        # The look-alike host is unresolvable here: what matters is that no JWT is injected on the way.
        headers = {"Authorization": f"Bearer {handle}"}
        response = requests.get(
            "http://api.example.com.evil.net/", headers=headers, proxies=proxies, timeout=10
        )
        assert response.status_code == 502  # mitmproxy could not reach it; the addon did not refuse it
        assert "split-token" not in response.text
        assert "joined handle" not in started.output()


# ---------------------------------------------------------------------------------------------------------
# Issue 4: token lifecycle


def test_a_whole_session_with_handles_only(idp, api, store: str) -> None:
    started = start_proxy(url(idp), url(api), store=store, options={"splittoken_refresh_grace": "0"})
    try:
        tokens = login(started).json()
        access, refresh = tokens["access_token"], tokens["refresh_token"]
        assert not JWS_RE.search(json.dumps(tokens)) and len(refresh) >= 43
        assert call_api(started, f"Bearer {access}").status_code == 200

        refreshed = requests.post(
            started.idp_url + TOKEN_PATH,
            data={"grant_type": "refresh_token", "refresh_token": refresh, **CLIENT}, timeout=10,
        )  # fmt: skip
        assert refreshed.status_code == 200, refreshed.text
        new = refreshed.json()
        assert not JWS_RE.search(refreshed.text)
        assert new["refresh_token"] != refresh and new["access_token"] != access
        assert call_api(started, f"Bearer {new['access_token']}").status_code == 200

        # The identity provider rotated the refresh token: the old handle is gone, without asking it.
        before = idp_stats(idp)["token"]["refresh_token"]
        again = requests.post(
            started.idp_url + TOKEN_PATH,
            data={"grant_type": "refresh_token", "refresh_token": refresh, **CLIENT}, timeout=10,
        )  # fmt: skip
        assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
        assert idp_stats(idp)["token"]["refresh_token"] == before

        revoked_before = idp_stats(idp)["revoke"]
        for handle in (new["access_token"], new["refresh_token"]):
            revoked = requests.post(
                started.idp_url + REVOKE_PATH, data={"token": handle, **CLIENT}, timeout=10
            )
            assert revoked.status_code == 200
        assert idp_stats(idp)["revoke"] == revoked_before + 2  # the real tokens reached the IdP
        assert call_api(started, f"Bearer {new['access_token']}").status_code == 401
        after = requests.post(
            started.idp_url + TOKEN_PATH,
            data={"grant_type": "refresh_token", "refresh_token": new["refresh_token"], **CLIENT}, timeout=10,
        )  # fmt: skip
        assert after.status_code == 400 and after.json()["error"] == "invalid_grant"
    finally:
        output = started.output()
        started.stop()
    for secret in (access, refresh, new["access_token"], new["refresh_token"]):
        assert secret not in output
    assert not JWS_RE.search(output)


def test_concurrent_refreshes_are_single_flight(api, tmp_path: Path) -> None:
    with start_idp("--refresh-delay", "0.5") as slow_idp:
        started = start_proxy(url(slow_idp), url(api), store=str(tmp_path / "store"))
        try:
            refresh = login(started).json()["refresh_token"]
            before = idp_stats(slow_idp)["token"]["refresh_token"]

            def refresh_once(_: int) -> requests.Response:
                return requests.post(
                    started.idp_url + TOKEN_PATH,
                    data={"grant_type": "refresh_token", "refresh_token": refresh, **CLIENT}, timeout=30,
                )  # fmt: skip

            with ThreadPoolExecutor(20) as pool:
                answers = list(pool.map(refresh_once, range(20)))
            assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers]
            assert idp_stats(slow_idp)["token"]["refresh_token"] == before + 1
            assert len({a.json()["access_token"] for a in answers}) == 1
            assert len({a.json()["refresh_token"] for a in answers}) == 1
            new = answers[0].json()
            assert call_api(started, f"Bearer {new['access_token']}").status_code == 200
            # Within the grace period the rotated handle replays the same answer; the new one refreshes.
            late = refresh_once(0)
            assert late.status_code == 200 and late.json() == new
            assert idp_stats(slow_idp)["token"]["refresh_token"] == before + 1
        finally:
            started.stop()


def test_expired_handles_are_refused_at_once(proxy: Proxy) -> None:
    handle = login(proxy, access_ttl="2").json()["access_token"]
    assert call_api(proxy, f"Bearer {handle}").status_code == 200
    deadline = time.monotonic() + 10
    while (status := call_api(proxy, f"Bearer {handle}").status_code) == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status == 401


def test_admin_cli_works_on_a_running_store(proxy: Proxy, store: str) -> None:
    tokens = login(proxy).json()

    def admin(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "splittoken_admin.py"), "--store", store, *args],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    stats = admin("stats")
    assert stats.returncode == 0 and re.fullmatch(r"records=2 expired=0\n", stats.stdout)
    shown = admin("show", tokens["access_token"])
    assert "kind=access" in shown.stdout and tokens["access_token"] not in shown.stdout
    assert admin("revoke", tokens["access_token"]).returncode == 0
    assert call_api(proxy, f"Bearer {tokens['access_token']}").status_code == 401
    assert admin("revoke", tokens["access_token"]).returncode == 1
    assert admin("purge").returncode == 0
    for result in (stats, shown):
        assert not JWS_RE.search(result.stdout)


# ---------------------------------------------------------------------------------------------------------
# Issue 3: failures close, logs stay clean


def test_store_on_a_full_disk_fails_closed(idp, api, tmp_path: Path) -> None:
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        started = start_proxy(url(idp), url(api), store=str(mount / "store"))
        try:
            handle = login(started).json()["access_token"]  # written while there was room
            filler = mount / "filler"
            with filler.open("wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                except OSError:
                    pass
            response = login(started, pad="4000")
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"]
            assert not JWS_RE.search(response.text) and "access_token" not in response.text
            # Reading still works on a full disk: issued handles keep working.
            assert call_api(started, f"Bearer {handle}").status_code == 200
            filler.unlink()
            assert login(started).status_code == 200  # recovers once there is room again
        finally:
            started.stop()
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_stolen_store_yields_no_token_handle_or_claim(
    idp, proxy: Proxy, store: str, tmp_path: Path
) -> None:
    tokens = login(proxy).json()
    client = requests.post(
        proxy.idp_url + TOKEN_PATH,
        data={"grant_type": "client_credentials", "refresh": "1", **CLIENT},
        timeout=10,
    ).json()
    jwts = [
        forwarded_authorization(call_api(proxy, f"Bearer {t['access_token']}")).split(" ")[1]
        for t in (tokens, client)
    ]
    claims = verify_with_idp(idp, jwts[0])
    stolen = tmp_path / "stolen"
    shutil.copytree(store, stolen)
    files = [p for p in stolen.rglob("*") if p.is_file()]
    assert files
    secrets = [
        tokens["access_token"],
        tokens["refresh_token"],
        client["access_token"],
        client["refresh_token"],
    ]
    secrets += [segment for token in jwts for segment in token.split(".")]
    secrets += [claims["sub"], claims["email"], "demo-client", "acme", "alice"]
    for path in files:
        data = path.read_bytes()
        assert not JWS_RE.search(data.decode("latin-1")), path
        for secret in secrets:
            assert secret.encode() not in data, (path, secret[:12])


def test_oidc_discovery_and_keys_work_through_the_proxy(idp, proxy: Proxy) -> None:
    """An OAuth client library pointed at the proxy fetches discovery and the key set without credentials."""
    discovery = requests.get(proxy.idp_url + "/realms/demo/.well-known/openid-configuration", timeout=10)
    assert discovery.status_code == 200 and discovery.json()["token_endpoint"].endswith("/token")
    keys = requests.get(proxy.idp_url + "/realms/demo/protocol/openid-connect/certs", timeout=10)
    assert keys.status_code == 200 and keys.json()["keys"]
    # Any other route without credentials is still refused by the proxy itself.
    assert call_api(proxy, None, "/realms/demo/account").status_code == 401
