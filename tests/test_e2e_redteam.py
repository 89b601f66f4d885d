"""Attacks from outside on DPoP, introspection, metrics and the cluster-wide refresh lock (issues 13, 14, 15):
real mitmdump processes in reverse mode, the demo identity provider, the echo API, and the thief's tools (a
raw HTTP client for repeated header fields, proofs seen on the wire, two proxies raced at once).

Each test is one attack and the property that stops it; what reached the API is read from the echo API.
"""

from __future__ import annotations

import functools
import gzip
import http.client
import http.server
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from procs import ManagedProcess, free_port
from splittoken import dpop
from splittoken.audit import handle_id
from stack import CLIENT, DEMO_OPTIONS, REVOKE_PATH, TOKEN_PATH, Proxy, start_proxy
from test_e2e_dpop import (
    JKT,
    KEY,
    PASSWORD,
    THIEF_KEY,
    api_url,
    assert_refused_here,
    call,
    echo_count,
    forwarded,
    login,
    proven,
    running_proxy,
    send,
    token_url,
)
from test_e2e_scaleout import at_once, idp_refreshes, store_of

pytestmark = pytest.mark.e2e

PUBLIC_API = "https://api.example.test"
FORM = ("Content-Type", "application/x-www-form-urlencoded")
INTROSPECT_PATH = TOKEN_PATH + "/introspect"


@pytest.fixture(scope="module")
def proxy(
    idp: ManagedProcess, api: ManagedProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    with running_proxy(idp, api, tmp_path_factory.mktemp("redteam") / "store") as started:
        yield started


@pytest.fixture(params=["disk", "redis"])
def one_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store for two proxies to share: a diskcache directory, or one Redis."""
    return store_of(request, tmp_path)


@pytest.fixture
def behind_one_balancer(idp: ManagedProcess, api: ManagedProcess, one_store: str) -> Iterator[list[Proxy]]:
    """Two proxies on one store whose API listeners a load balancer serves as one public URL: a proof that
    names it is good at either, and must be accepted once."""
    assert idp.url and api.url
    started: list[Proxy] = []
    try:
        for _ in range(2):
            ports = (free_port(), free_port(), free_port())
            options = {**DEMO_OPTIONS, "splittoken_public_urls": f"{PUBLIC_API}@{ports[1]}"}
            started.append(start_proxy(idp.url, api.url, store=one_store, ports=ports, options=options))
        yield started
    finally:
        for one in started:
            one.stop()


def refresh_form(refresh_handle: str, **fields: str) -> dict[str, str]:
    return {"grant_type": "refresh_token", "refresh_token": refresh_handle, **CLIENT, **fields}


# ---------------------------------------------------------------------------------------------------------
# DPoP: spellings and replays


def test_one_proof_raced_at_two_proxies_is_accepted_once(
    behind_one_balancer: list[Proxy], api: ManagedProcess
) -> None:
    first, second = behind_one_balancer
    handle = login(first)["access_token"]
    seen = proven(first, handle, url=PUBLIC_API + "/orders")
    assert (
        call(second, *proven(second, handle, url=PUBLIC_API + "/orders")).status_code == 200
    )  # it is good there
    before = echo_count(api)
    answers = at_once([functools.partial(call, one, *seen) for one in (first, second)])
    assert sorted(answer.status_code for answer in answers) == [200, 401], [a.text for a in answers]
    assert echo_count(api) == before + 1


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param("Bearer {}", id="bearer-with-proof"),
        pytest.param("{}", id="bare-with-proof"),
        pytest.param("DPoP\t{}", id="tab"),
        pytest.param("DPoP{}", id="no-space"),
    ],
)
def test_a_bound_handle_in_another_spelling_never_reaches_the_api(
    proxy: Proxy, api: ManagedProcess, authorization: str
) -> None:
    """A valid proof beside it changes nothing: only ``DPoP <handle>`` with its proof joins (§7.2)."""
    handle = login(proxy)["access_token"]
    _, proof = proven(proxy, handle)
    before = echo_count(api)
    answer = call(proxy, ("Authorization", authorization.format(handle)), proof)
    assert answer.status_code in {400, 401}, answer.text
    assert echo_count(api) == before


JWE = "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00iLCJ0eXAiOiJkcG9wK2p3dCJ9.a2V5.aXY.Y2lwaGVy.dGFn"


@pytest.mark.parametrize("value", [pytest.param(JWE, id="jwe"), pytest.param("e" * 60_000, id="60k")])
def test_an_encrypted_or_huge_proof_is_refused_and_the_proxy_stays(
    proxy: Proxy, api: ManagedProcess, value: str
) -> None:
    handle = login(proxy)["access_token"]
    before = echo_count(api)
    answer = call(proxy, ("Authorization", f"DPoP {handle}"), ("DPoP", value))
    assert answer.status_code in {401, 431}, answer.text
    assert echo_count(api) == before
    assert call(proxy, *proven(proxy, handle)).status_code == 200


def test_a_proof_for_the_token_endpoint_does_not_open_the_api(proxy: Proxy, api: ManagedProcess) -> None:
    """The thief saw the owner's login: its proof names the token endpoint and has no ath."""
    login_proof = dpop.make_proof(KEY, "POST", token_url(proxy))
    body = requests.post(token_url(proxy), data=PASSWORD, headers={"DPoP": login_proof}, timeout=10).json()
    before = echo_count(api)
    for method in ("GET", "POST"):
        answer = send(
            api_url(proxy), method, (("Authorization", f"DPoP {body['access_token']}"), ("DPoP", login_proof))
        )
        assert_refused_here(answer, "invalid_dpop_proof")
    assert echo_count(api) == before


def test_a_bearer_handle_keeps_a_dpop_header_away_from_the_api(proxy: Proxy) -> None:
    """An API behind the proxy trusts it for proof of possession: no client's DPoP header may reach it, even
    beside a bearer handle, or a thief's own proof would pass for one the proxy checked."""
    handle = requests.post(token_url(proxy), data=PASSWORD, timeout=10).json()["access_token"]
    thief_proof = dpop.make_proof(THIEF_KEY, "GET", api_url(proxy), access_token=handle)
    answer = call(proxy, ("Authorization", f"Bearer {handle}"), ("DPoP", thief_proof))
    assert "dpop" not in forwarded(answer)


def test_a_replayed_proof_does_not_refresh_a_bound_refresh_handle(proxy: Proxy, idp: ManagedProcess) -> None:
    """The thief has the refresh handle, the client's secret and the proof of the owner's last token request:
    refused before the authorization server hears of it, and the owner's refresh still works."""
    owner_proof = dpop.make_proof(KEY, "POST", token_url(proxy))
    body = requests.post(token_url(proxy), data=PASSWORD, headers={"DPoP": owner_proof}, timeout=10).json()
    before = idp_refreshes(idp)
    stolen = requests.post(
        token_url(proxy), data=refresh_form(body["refresh_token"]), headers={"DPoP": owner_proof}, timeout=10
    )
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_dpop_proof", stolen.text
    assert idp_refreshes(idp) == before
    fresh = {"DPoP": dpop.make_proof(KEY, "POST", token_url(proxy))}
    renewed = requests.post(
        token_url(proxy), data=refresh_form(body["refresh_token"]), headers=fresh, timeout=10
    )
    assert renewed.status_code == 200 and renewed.json()["token_type"] == "DPoP", renewed.text


def test_a_thief_racing_the_owners_refresh_across_two_proxies_gets_nothing(
    behind_one_balancer: list[Proxy], idp: ManagedProcess
) -> None:
    """Owner's tabs on both proxies and a thief with the refresh handle and the client's secret (a public
    client has none) but its own key, all at once: one refresh upstream, every tab the same answer."""
    first, second = behind_one_balancer
    refresh_handle = login(first)["refresh_token"]
    before = idp_refreshes(idp)

    def refresh(one: Proxy, key: object) -> requests.Response:
        proof = {"DPoP": dpop.make_proof(key, "POST", token_url(one))}
        return requests.post(
            token_url(one), data=refresh_form(refresh_handle, delay_ms="300"), headers=proof, timeout=15
        )

    *owners, thief = at_once(
        [functools.partial(refresh, one, KEY) for one in (first, second, first, second)]
        + [functools.partial(refresh, second, THIEF_KEY)]
    )
    assert thief.status_code == 400 and thief.json()["error"] == "invalid_dpop_proof", thief.text
    assert {answer.status_code for answer in owners} == {200}, [answer.text for answer in owners]
    assert len({answer.json()["access_token"] for answer in owners}) == 1
    assert all(answer.json()["access_token"] not in thief.text for answer in owners)
    assert idp_refreshes(idp) == before + 1


def test_a_thief_without_the_client_secret_cannot_revoke_a_bound_handle(proxy: Proxy) -> None:
    """RFC 7009 §2.1: the server first validates the client credentials. A thief who holds the owner's bound
    handles but not the client's secret gets 401 invalid_client, and the owner keeps its session."""
    body = login(proxy)
    for token in (body["access_token"], body["refresh_token"]):
        form = {"token": token, "client_id": CLIENT["client_id"], "client_secret": "guessed"}
        stolen = requests.post(proxy.idp_url + REVOKE_PATH, data=form, timeout=10)
        assert stolen.status_code == 401 and stolen.json()["error"] == "invalid_client", stolen.text
    assert call(proxy, *proven(proxy, body["access_token"])).status_code == 200
    fresh = {"DPoP": dpop.make_proof(KEY, "POST", token_url(proxy))}
    renewed = requests.post(
        token_url(proxy), data=refresh_form(body["refresh_token"]), headers=fresh, timeout=10
    )
    assert renewed.status_code == 200, renewed.text


# ---------------------------------------------------------------------------------------------------------
# Introspection


def test_an_introspection_call_to_an_api_gets_no_token(proxy: Proxy) -> None:
    """An API (or a thief's server behind the proxy) that asks for introspection at its own listener gets
    the handle as sent, never the JWT: handles are swapped only beside the endpoint that issued them."""
    handle = requests.post(token_url(proxy), data=PASSWORD, timeout=10).json()["access_token"]
    body = f"token={handle}&token_type_hint=access_token".encode()
    authorization = ("Authorization", f"Bearer {handle}")
    answer = send(api_url(proxy, "/oauth/introspect"), "POST", (FORM, authorization), body)
    echoed = answer.json()
    assert echoed["body"] == body.decode(), echoed["body"]
    assert "eyJ" not in echoed["body"]


@pytest.mark.parametrize(
    "path", ["/introspect/", "/introspect;x", "/INTROSPECT", "/%69ntrospect", "//introspect"]
)
def test_introspection_at_a_spelling_the_filter_misses_leaks_nothing(proxy: Proxy, path: str) -> None:
    """Paths a lenient server routes to introspection: the proxy swaps the handle (a spelling it normalises)
    or the server sees the handle, which it does not know; either way no JWS comes back."""
    handle = requests.post(token_url(proxy), data=PASSWORD, timeout=10).json()["access_token"]
    form = {"token": handle, **CLIENT}
    answer = requests.post(proxy.idp_url + TOKEN_PATH + path, data=form, timeout=10)
    assert "eyJ" not in answer.text and not any("eyJ" in value for value in answer.headers.values())


def test_introspecting_a_jwt_directly_gets_it_no_further_than_the_server(proxy: Proxy) -> None:
    """``token=<the JWT>``: not a handle, it passes to the server unchanged, whose answer carries no JWS."""
    handle = requests.post(token_url(proxy), data=PASSWORD, timeout=10).json()["access_token"]
    token = call(proxy, ("Authorization", f"Bearer {handle}")).json()["headers"]
    (jwt_sent,) = [value.partition(" ")[2] for name, value in token if name.lower() == "authorization"]
    assert jwt.decode(jwt_sent, options={"verify_signature": False})["sub"]
    answer = requests.post(
        proxy.idp_url + TOKEN_PATH + "/introspect", data={"token": jwt_sent, **CLIENT}, timeout=10
    )
    assert answer.status_code in {200, 502}, answer.text
    assert "eyJ" not in answer.text and handle not in answer.text


# ---------------------------------------------------------------------------------------------------------
# Metrics and the audit trail


def test_a_dpop_life_leaves_no_secret_in_metrics_or_the_audit_trail(
    idp: ManagedProcess, api: ManagedProcess, tmp_path: Path
) -> None:
    """Login with a proof, calls, a thief's tries (replay, another key, as Bearer), a refresh, an
    introspection, a revocation: no handle, token, proof, jti or thumbprint in /metrics or the audit file."""
    port, audit = free_port(), tmp_path / "audit.log"
    options = {"splittoken_metrics": f"127.0.0.1:{port}", "splittoken_audit_log": str(audit)}
    with running_proxy(idp, api, tmp_path / "store", **options) as started:
        login_proof = dpop.make_proof(KEY, "POST", token_url(started), jti="login-jti-" + "q" * 30)
        body = requests.post(
            token_url(started), data=PASSWORD, headers={"DPoP": login_proof}, timeout=10
        ).json()
        handle, refresh_handle = body["access_token"], body["refresh_token"]
        seen = proven(started, handle, jti="call-jti-" + "w" * 30)
        received = forwarded(call(started, *seen))
        real_jwt = received["authorization"][0].partition(" ")[2]
        assert_refused_here(call(started, *seen), "invalid_dpop_proof")
        assert_refused_here(call(started, *proven(started, handle, key=THIEF_KEY)), "invalid_dpop_proof")
        assert_refused_here(call(started, ("Authorization", f"Bearer {handle}")), "invalid_token")
        fresh = {"DPoP": dpop.make_proof(KEY, "POST", token_url(started))}
        renewed = requests.post(
            token_url(started), data=refresh_form(refresh_handle), headers=fresh, timeout=10
        ).json()
        introspected = requests.post(
            started.idp_url + INTROSPECT_PATH, data={"token": renewed["access_token"], **CLIENT}, timeout=10
        )
        assert introspected.status_code == 200 and introspected.json()["active"] is True, introspected.text
        revoked = requests.post(
            started.idp_url + REVOKE_PATH, data={"token": renewed["refresh_token"], **CLIENT}, timeout=10
        )
        assert revoked.status_code == 200, revoked.text
        deadline = time.monotonic() + 15
        while '"event":"revoke"' not in (audit.read_text() if audit.exists() else ""):
            assert time.monotonic() < deadline, "the revocation never reached the audit trail"
            time.sleep(0.05)
        metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    trail = audit.read_text()
    assert audit.stat().st_mode & 0o777 == 0o600  # other users of the host read no subjects or addresses
    assert {json.loads(line)["event"] for line in trail.splitlines()} >= {
        "split",
        "join",
        "refuse",
        "refresh",
    }
    header, payload, _ = real_jwt.split(".")
    secrets = {
        handle,
        refresh_handle,
        renewed["access_token"],
        renewed["refresh_token"],
        real_jwt,
        header,
        payload,
        login_proof,
        seen[1][1],
        "login-jti-",
        "call-jti-",
        JKT,
        dpop.thumbprint(dpop.public_jwk(THIEF_KEY)),
    }
    for text, where in ((trail, "audit trail"), (metrics, "metrics")):
        assert not [secret[:12] for secret in secrets if secret in text], where


# ---------------------------------------------------------------------------------------------------------
# Metrics


def test_metrics_are_served_on_their_own_listener_only(
    idp: ManagedProcess, api: ManagedProcess, tmp_path: Path
) -> None:
    """/metrics is not reachable through the proxy's listeners, in any spelling, and its own listener
    passes nothing on."""
    port = free_port()
    with running_proxy(idp, api, tmp_path / "store", splittoken_metrics=f"127.0.0.1:{port}") as started:
        scraped = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert "splittoken_joins_total" in scraped.text
        for listener in (started.idp_url, started.api_url):
            for path in ("/metrics", "//metrics", "/metrics?x=1", "/METRICS"):
                through = requests.get(listener + path, timeout=10)
                assert "splittoken_" not in through.text, (listener, path)
        # And the metrics listener is no proxy: a request in proxy form goes nowhere.
        assert api.url
        before = echo_count(api)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", api.url + "/orders")
        assert "splittoken_joins_total" in connection.getresponse().read().decode()
        connection.close()
        assert echo_count(api) == before


# ---------------------------------------------------------------------------------------------------------
# An authorization server the attacker controls: it issues JWTs with the subject asked for, and answers
# introspection by quoting the token it got in the encoding asked for.

AS_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _quoting(token: str, variant: str) -> tuple[bytes, dict[str, str]]:
    """An introspection answer's body and header fields that carry ``token`` as ``variant`` says."""
    active = {"active": True, "sub": "mallory"}
    escaped = "".join(f"\\u{ord(c):04x}" for c in token[:3]) + token[3:]
    bodies = {
        "plain": json.dumps(active | {"token": token}),
        "json-escaped": json.dumps(active)[:-1] + f', "token": "{escaped}"}}',
        "percent": json.dumps(active | {"token": urllib.parse.quote(token, safe="")}).replace(".", "%2E"),
        "utf-16": json.dumps(active | {"token": token}),
        "header": json.dumps(active),
        "gzip": json.dumps(active | {"token": token}),
    }
    body = bodies[variant].encode("utf-16-le" if variant == "utf-16" else "utf-8")
    headers = {"Content-Type": "application/json"}
    if variant == "header":
        headers["X-Introspected"] = token
    if variant == "gzip":
        body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
    return body, headers


class HostileAuthorizationServer(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        form = dict(urllib.parse.parse_qsl(self.rfile.read(int(self.headers["Content-Length"])).decode()))
        if self.path == TOKEN_PATH:
            now = int(time.time())
            claims = {"sub": form.get("sub", "mallory"), "iat": now, "exp": now + 300, "iss": "hostile"}
            token = jwt.encode(claims, AS_KEY, algorithm="RS256", headers={"kid": "k1"})
            answer = {"access_token": token, "token_type": "Bearer", "expires_in": 300}
            body, headers = json.dumps(answer).encode(), {"Content-Type": "application/json"}
        else:
            body, headers = _quoting(form["token"], form.get("variant", "plain"))
        self.send_response(200)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def hostile(api: ManagedProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proxy, Path]]:
    """The proxy in front of the hostile server, with its audit trail on."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HostileAuthorizationServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    home = tmp_path_factory.mktemp("hostile")
    audit = home / "audit.log"
    assert api.url
    upstream = f"http://127.0.0.1:{server.server_address[1]}"
    options = {**DEMO_OPTIONS, "splittoken_audit_log": str(audit)}
    started = start_proxy(upstream, api.url, store=str(home / "store"), options=options)
    try:
        yield started, audit
    finally:
        started.stop()
        server.shutdown()
        server.server_close()


def hostile_login(proxy: Proxy, sub: str = "mallory") -> str:
    answer = requests.post(
        proxy.idp_url + TOKEN_PATH,
        data={"grant_type": "client_credentials", "sub": sub, **CLIENT},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    handle = answer.json()["access_token"]
    assert "." not in handle
    return handle


@pytest.mark.parametrize("variant", ["plain", "json-escaped", "percent", "utf-16", "header", "gzip"])
def test_an_introspection_answer_quoting_the_jwt_is_refused(
    hostile: tuple[Proxy, Path], variant: str
) -> None:
    proxy, _ = hostile
    handle = hostile_login(proxy)
    form = {
        "token": handle,
        "token_type_hint": "refresh_token",
        "variant": variant,
        **CLIENT,
    }  # the hint lies
    answer = requests.post(proxy.idp_url + INTROSPECT_PATH, data=form, timeout=10)
    assert answer.status_code == 502, answer.text
    assert "eyJ" not in answer.text and "X-Introspected" not in answer.headers


def test_a_subject_cannot_forge_audit_lines(hostile: tuple[Proxy, Path]) -> None:
    """A sub with quotes and newlines (the authorization server's word, or a user's chosen name) stays one
    JSON string in one line; a sub shaped like a token is left out."""
    proxy, audit = hostile
    forged = 'm"\n{"event":"revoke","handle_id":"' + "0" * 32 + '"}\n'
    tokenish = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
    subs = (forged, forged.replace("\n", "\\n"), tokenish, "x" * 5000)
    ids = []
    for sub in subs:
        handle = hostile_login(proxy, sub)
        assert call(proxy, ("Authorization", f"Bearer {handle}")).status_code == 200
        ids.append(handle_id(handle))
    deadline = time.monotonic() + 15
    while True:
        # Every line is one JSON object; the ones about these handles are read in order.
        events = [json.loads(line) for line in audit.read_text().splitlines()]
        ours = [event for event in events if event.get("handle_id") in ids]
        if len(ours) >= 8 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [(event["event"], event["handle_id"]) for event in ours] == [
        (event, one) for one in ids for event in ("split", "join")
    ], ours
    assert [event.get("sub") for event in ours[::2]] == [None, subs[1], None, "x" * 200]
    assert not any(event.get("event") == "revoke" for event in events)
    assert tokenish not in audit.read_text()
    assert not any(event.get("handle_id") == "0" * 32 for event in events)
