"""Route integrity (issue 10, properties 1-9 but 10): attacks on a real mitmdump with the addon, from outside.

Each test is an attack, or a new user's mistake, that must not hand a client a real token. Upstreams: the
demo identity provider (Keycloak's paths, strict routing), a slow copy of it (concurrent refreshes overlap),
the echo API, and tests/canned.py's CannedServer: a lenient authorization server and API behind one origin,
scriptable, recording every request it receives. One mitmdump per configuration serves the whole module.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import stat
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from canned import CLIENT_ASSERTION_TYPE, SECRET_CLAIMS, Answer, CannedServer, Received, canned_server, sign
from procs import ManagedProcess, free_port, start_process
from stack import ADDON, CLIENT, REVOKE_PATH, ROOT, TOKEN_PATH, Proxy, start_idp, start_proxy, tool_path

pytestmark = pytest.mark.e2e

JSON_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")
BASIC = (CLIENT["client_id"], CLIENT["client_secret"])
ALICE = {"grant_type": "password", "username": "alice", "password": "alice-pw"}
ALICE_SECRETS = ("alice@example.com", '"acme"')
CANNED_CLIENT = {"client_id": "canned-client", "client_secret": "canned-secret"}
CANNED_LOGIN = {"grant_type": "password", "username": "victim", "password": "pw", **CANNED_CLIENT}
# 43 base64url characters, shaped like a handle, never issued.
FORGED_HANDLE = "Zm9yZ2VkLWhhbmRsZS10aGF0LXdhcy1uZXZlci1pc3N1"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPE = "urn:ietf:params:oauth:token-type:"


# ---------------------------------------------------------------------------------------------------------
# The proxies


@dataclass
class Listeners:
    """One mitmdump with a reverse-proxy listener per upstream, by name."""

    proxy: Proxy
    urls: dict[str, str]
    store: Path

    def __getitem__(self, upstream: str) -> str:
        return self.urls[upstream]


@contextlib.contextmanager
def listeners(
    upstreams: Mapping[str, str], store: Path, *, default_store: bool = False, **options: str
) -> Iterator[Listeners]:
    """mitmdump in front of ``upstreams`` (the first two are start_proxy's identity provider and API)."""
    (first, first_url), (second, second_url), *more = upstreams.items()
    ports = {name: free_port() for name, _ in more}
    extra = [arg for (name, url) in more for arg in ("--mode", f"reverse:{url}@{ports[name]}")]
    proxy = start_proxy(
        first_url, second_url, store=None if default_store else str(store), options=options,
        extra_args=extra,
    )  # fmt: skip
    try:
        for port in ports.values():
            proxy.process.wait_for(re.compile(rf"listening at .*:{port}\b"), timeout=30)
        urls = {first: proxy.idp_url, second: proxy.api_url}
        urls |= {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        yield Listeners(proxy, urls, store)
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def slow_idp() -> Iterator[ManagedProcess]:
    """A demo identity provider that takes 1.5 s to answer a refresh: concurrent refreshes overlap."""
    with start_idp("--refresh-delay", "1.5") as process:
        yield process


@pytest.fixture(scope="module")
def gateway() -> Iterator[CannedServer]:
    with canned_server() as server:
        yield server


@pytest.fixture(autouse=True)
def _scripts_end_with_their_test(gateway: CannedServer) -> Iterator[None]:
    # A script whose request never reached the gateway (the proxy answered it) must not answer the next
    # test's request.
    yield
    gateway.script.clear()


@pytest.fixture(scope="module")
def proxy(
    idp: ManagedProcess, api: ManagedProcess, slow_idp: ManagedProcess, gateway: CannedServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Listeners]:  # fmt: skip
    """Every option at its default."""
    upstreams = {"idp": url(idp), "api": url(api), "slow_idp": url(slow_idp), "gateway": gateway.url}
    with listeners(upstreams, tmp_path_factory.mktemp("default") / "store") as started:
        yield started


@pytest.fixture(scope="module")
def scoped(
    idp: ManagedProcess, api: ManagedProcess, gateway: CannedServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Listeners]:
    """An API filter naming the API alone, as a deployment in front of one API writes it: requests to the
    authorization servers' listeners are no API route."""
    api_filter = f'~u "^{re.escape(url(api))}/"'
    upstreams = {"idp": url(idp), "api": url(api), "gateway": gateway.url}
    store = tmp_path_factory.mktemp("scoped") / "store"
    with listeners(upstreams, store, splittoken_api_filter=api_filter) as started:
        # The proxy has seen the gateway answer on its canonical token path: it is an authorization server.
        assert "." not in canned_login(started["gateway"])["access_token"]
        yield started


STREAMED = 8192  # stream_large_bodies of the streaming proxy


@pytest.fixture(scope="module")
def streaming(
    idp: ManagedProcess, api: ManagedProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Listeners]:
    """Bodies over 8k streamed (the proxy refuses a stream_large_bodies below splittoken_max_body, so that
    no token response is ever streamed past it), and the default store under a fresh confdir."""
    confdir = tmp_path_factory.mktemp("confdir")
    with listeners(
        {"idp": url(idp), "api": url(api)}, confdir / "splittoken-store", default_store=True,
        confdir=str(confdir), stream_large_bodies="8k", splittoken_max_body=str(STREAMED),
    ) as started:  # fmt: skip
        yield started


# ---------------------------------------------------------------------------------------------------------
# HTTP, spelled exactly: requests (urllib3) would remove dot segments and fragments before sending


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def text(self) -> str:
        """All a client can read: header lines and body."""
        lines = [f"{name}: {value}" for name, value in self.headers]
        return "\n".join([*lines, self.body.decode("utf-8", "replace")])

    def json(self) -> dict:
        return json.loads(self.body.decode("utf-8-sig"))


def send(base: str, method: str, target: str, form: Mapping[str, str] | None = None, **headers: str) -> Reply:
    host, port = urllib.parse.urlsplit(base).hostname, urllib.parse.urlsplit(base).port
    assert host and port
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        body = urllib.parse.urlencode(form or {}).encode()
        if form is not None:
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        connection.request(method, target, body if form is not None else None, headers)
        response = connection.getresponse()
        return Reply(response.status, response.getheaders(), response.read())
    finally:
        connection.close()


def url(process: ManagedProcess) -> str:
    assert process.url
    return process.url


def demo_login(base: str) -> dict:
    response = requests.post(base + TOKEN_PATH, data=ALICE, auth=BASIC, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def demo_refresh(base: str, refresh_token: str, **client: object) -> requests.Response:
    """A refresh grant; ``client`` is requests' auth= and any data fields of the client authentication."""
    fields = {"grant_type": "refresh_token", "refresh_token": refresh_token, **client.pop("data", {})}
    return requests.post(base + TOKEN_PATH, data=fields, timeout=30, **client)


def revoke(base: str, token: str, path: str = REVOKE_PATH, **client: object) -> requests.Response:
    return requests.post(base + path, data={"token": token, **client.pop("data", {})}, timeout=30, **client)


def canned_login(base: str, **fields: str) -> dict:
    response = requests.post(base + TOKEN_PATH, data={**CANNED_LOGIN, **fields}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def canned_refresh(base: str, refresh_token: str, **fields: str) -> requests.Response:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token, **CANNED_CLIENT, **fields}
    return requests.post(base + TOKEN_PATH, data=form, timeout=30)


def stats(process: ManagedProcess) -> dict:
    return requests.get(url(process) + "/_stats", timeout=10).json()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting until {what}"
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------------------
# What a client can read


def readings(text: str) -> list[str]:
    """The text as a client may read it: as is, with JSON escapes undone, percent-decoded."""
    unescaped = JSON_ESCAPE.sub(lambda m: chr(int(m[1], 16)), text).replace("\\/", "/")
    return [text, unescaped, urllib.parse.unquote_plus(text), urllib.parse.unquote_plus(unescaped)]


def decodes_to(text: str, secrets: Iterable[str]) -> bool:
    """Whether base64url anywhere in ``text``, at any alignment and cut short or not, decodes to a secret:
    what jwt.io would show of a token, or of any part of one."""
    wanted = [s.encode() for s in secrets]
    for reading in readings(text):
        for run in re.findall(r"[A-Za-z0-9_-]{8,}", reading):
            for offset in range(4):
                usable = run[offset:][: (len(run) - offset) // 4 * 4]
                decoded = base64.urlsafe_b64decode(usable)
                if any(secret in decoded for secret in wanted):
                    return True
    return False


def jws_in(text: str) -> Iterator[str]:
    """Every run of three dot-separated segments whose first decodes to a JOSE header."""
    for run in re.findall(r"[A-Za-z0-9_.-]+", text):
        segments = run.split(".")
        for i in range(len(segments) - 2):
            if decodes_to(segments[i], ['"alg"']):
                yield ".".join(segments[i : i + 3])


def assert_no_token(
    reply: Reply | requests.Response, real: Iterable[str] = (), claims: Iterable[str] = ()
) -> None:
    """The client got no JWS but the id_token, none of the ``real`` tokens in any form, and no claim, in
    its headers or its body."""
    if isinstance(reply, requests.Response):
        reply = Reply(reply.status_code, list(reply.headers.items()), reply.content)
    try:
        id_token = reply.json().get("id_token")
    except (ValueError, AttributeError):
        id_token = None
    claims = list(claims)
    for reading in readings(reply.text):
        for found in jws_in(reading):
            assert found == id_token, f"a JWS reached the client: {found[:12]}… (HTTP {reply.status})"
        for token in real:
            assert token not in reading, (
                f"a real token reached the client: {token[:8]}… (HTTP {reply.status})"
            )
        for claim in claims:
            assert claim not in reading, f"the client can read a claim (HTTP {reply.status})"
    assert not decodes_to(reply.text, claims), (
        f"the client can decode the token's claims (HTTP {reply.status})"
    )


def assert_gateway_got_no_token(gateway: CannedServer, since: int, where: str) -> None:
    """Nothing the proxy swapped in reached the gateway's ``where`` (a path prefix)."""
    for request in gateway.received[since:]:
        if not request.target.startswith(where):
            continue
        text = f"{request.header('authorization')}\n{request.body.decode('utf-8', 'replace')}"
        assert not any(jws_in(text)), f"the proxy sent a JWT to {request.target}"
        for token in gateway.issued_refresh:
            assert token not in text, f"the proxy sent a real refresh token to {request.target}"


def gateway_secrets(gateway: CannedServer) -> dict[str, object]:
    return {"real": list(gateway.issued_refresh), "claims": SECRET_CLAIMS.values()}


# ---------------------------------------------------------------------------------------------------------
# Property 1: path spelling cannot bypass the token route

P = TOKEN_PATH
# Request targets a lenient server (the gateway) serves as its token endpoint.
TOKEN_SPELLINGS = {
    "trailing slash": P + "/",
    "two trailing slashes": P + "//",
    "trailing dot segment": P + "/.",
    "trailing dot-dot segment": P + "/x/..",
    "trailing percent-encoded dot segment": P + "/%2e",
    "trailing percent-encoded dot-dot segment": P + "/x/%2e%2e",
    "dot segment": P.replace("/token", "/./token"),
    "dot-dot segment": P.replace("/token", "/x/../token"),
    "percent-encoded dot segment": P.replace("/token", "/%2e/token"),
    "percent-encoded dot-dot segment": P.replace("/token", "/x/%2E%2E/token"),
    "%74oken": P.replace("/token", "/%74oken"),
    "tok%65n": P.replace("/token", "/tok%65n"),
    "double slash": P.replace("/token", "//token"),
    "path parameter": P + ";jsessionid=x",
    "fragment": P + "#x",
    "query": P + "?x=1",
    "upper case": P.replace("/token", "/TOKEN"),
    "percent-encoded slash": P.replace("/token", "%2Ftoken"),
}


@pytest.mark.parametrize("target", TOKEN_SPELLINGS.values(), ids=TOKEN_SPELLINGS.keys())
def test_token_path_spellings_never_hand_out_tokens(
    scoped: Listeners, gateway: CannedServer, target: str
) -> None:
    """Property 1: with the authorization server's listener outside the API filter, a login on any spelling
    of the token path the server serves gets no JWS (but the id_token), no refresh token and no claim."""
    reply = send(scoped["gateway"], "POST", target, CANNED_LOGIN)
    assert_no_token(reply, **gateway_secrets(gateway))


@pytest.fixture(scope="module")
def canned_tokens(proxy: Listeners) -> dict:
    """A login at the gateway through the default proxy, on the canonical path."""
    tokens = canned_login(proxy["gateway"])
    assert "." not in tokens["access_token"]
    return tokens


@pytest.mark.parametrize("target", TOKEN_SPELLINGS.values(), ids=TOKEN_SPELLINGS.keys())
def test_token_path_spellings_never_get_a_handle_swapped_in(
    proxy: Listeners, gateway: CannedServer, canned_tokens: dict, target: str
) -> None:
    """Property 1: with the default filters, a login on a spelling of the token path that carries the
    client's access handle is no API call: the JWT is not sent to the authorization server, and the answer
    holds no token."""
    since = len(gateway.received)
    reply = send(
        proxy["gateway"],
        "POST",
        target,
        CANNED_LOGIN,
        Authorization=f"Bearer {canned_tokens['access_token']}",
    )
    assert_gateway_got_no_token(gateway, since, "/")
    assert_no_token(reply, **gateway_secrets(gateway))


DEMO_SPELLINGS = {"fragment": TOKEN_PATH + "#x", "query": TOKEN_PATH + "?x=1"}


@pytest.mark.parametrize("target", DEMO_SPELLINGS.values(), ids=DEMO_SPELLINGS.keys())
@pytest.mark.parametrize("configuration", ["scoped", "default with a handle"])
def test_demo_idp_token_spellings_never_hand_out_tokens(
    request: pytest.FixtureRequest, configuration: str, target: str
) -> None:
    """Property 1: the spellings the demo identity provider (strict routing, like Keycloak's) serves as its
    token endpoint: the client gets no JWT and no refresh token."""
    listening: Listeners = request.getfixturevalue("scoped" if configuration == "scoped" else "proxy")
    if configuration == "scoped":
        basic = base64.b64encode(":".join(BASIC).encode()).decode()
        reply = send(listening["idp"], "POST", target, ALICE, Authorization=f"Basic {basic}")
    else:
        # The only way past the API route's handle check: a handle of the client's own.
        handle = demo_login(listening["idp"])["access_token"]
        reply = send(listening["idp"], "POST", target, {**ALICE, **CLIENT}, Authorization=f"Bearer {handle}")
    assert_no_token(reply, claims=ALICE_SECRETS)


REVOKE_SPELLINGS = {
    "trailing slash": REVOKE_PATH + "/",
    "dot segment": REVOKE_PATH.replace("/revoke", "/./revoke"),
    "%72evoke": REVOKE_PATH.replace("/revoke", "/%72evoke"),
    "fragment": REVOKE_PATH + "#x",
}


@pytest.mark.parametrize("target", REVOKE_SPELLINGS.values(), ids=REVOKE_SPELLINGS.keys())
def test_revocation_path_spellings_revoke_the_handle(scoped: Listeners, target: str) -> None:
    """Property 1: a revocation on a spelling of the revocation path the server serves revokes the handle;
    it is not passed on as an unknown token that the server answers 200 for while the handle lives on."""
    handle = canned_login(scoped["gateway"])["access_token"]
    assert requests.get(scoped["api"] + "/x", headers={"Authorization": f"Bearer {handle}"}, timeout=30).ok
    answer = send(scoped["gateway"], "POST", target, {"token": handle, **CANNED_CLIENT})
    after = requests.get(scoped["api"] + "/x", headers={"Authorization": f"Bearer {handle}"}, timeout=30)
    assert answer.status != 200 or after.status_code == 401, "revoked with 200, but the handle still works"


# ---------------------------------------------------------------------------------------------------------
# Property 2: routes cannot be mixed up


@pytest.fixture(scope="module")
def raw_jwt(idp: ManagedProcess) -> str:
    """A real JWT from the identity provider itself, as a thief or a migrating client holds one."""
    answer = requests.post(url(idp) + TOKEN_PATH, data={**ALICE, **CLIENT}, timeout=30).json()
    return answer["access_token"]


API_TOKENISH = {
    "ends in /token": "/api/v1/token",
    "ends in /revoke": "/api/v1/revoke",
    "/token in a fragment": "/api/v1/orders#/token",
    "/revoke in a fragment": "/api/v1/orders#/revoke",
}


@pytest.mark.parametrize("target", API_TOKENISH.values(), ids=API_TOKENISH.keys())
@pytest.mark.parametrize("credential", ["none", "forged handle", "full JWT"])
def test_api_paths_ending_in_token_or_revoke_need_a_handle(
    proxy: Listeners, api: ManagedProcess, raw_jwt: str, target: str, credential: str
) -> None:
    """Property 2: an API path that merely ends in /token or /revoke (or seems to, to a filter reading the
    fragment) is an API route: without a valid handle the request is refused and never reaches the API."""
    headers = {"forged handle": f"Bearer {FORGED_HANDLE}", "full JWT": f"Bearer {raw_jwt}"}
    before = stats(api)["requests"]
    authorization = {"Authorization": headers[credential]} if credential in headers else {}
    reply = send(
        proxy["api"], "POST", target, {"grant_type": "client_credentials", "token": "x"}, **authorization
    )
    assert reply.status in (400, 401), reply.text
    assert stats(api)["requests"] == before, "the request reached the API"


def test_api_path_ending_in_token_gets_the_handle_joined(proxy: Listeners, api: ManagedProcess) -> None:
    """Property 2: ... and with a valid handle, it is re-joined like any API call."""
    handle = demo_login(proxy["idp"])["access_token"]
    response = requests.post(
        proxy["api"] + "/api/v1/token", data={"x": "1"}, headers={"Authorization": f"Bearer {handle}"},
        timeout=30,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    received = stats(api)["authorizations"][-1]
    assert received.startswith("Bearer ") and received.count(".") == 2, "the API did not get the JWT"
    assert received.rpartition(".")[2] == handle


EVIL = TOKEN_PATH.replace("/demo/", "/evil/")
MIXUPS: dict[str, tuple[str, str, Callable[[dict], dict[str, str]]]] = {
    "revoke an access handle at an API path": (
        "/api/session/revoke",
        "/api/",
        lambda t: {"token": t["access_token"]},
    ),
    "revoke a refresh handle at an API path": (
        "/api/session/revoke",
        "/api/",
        lambda t: {"token": t["refresh_token"]},
    ),
    "refresh at an API path": (
        "/api/oauth/token",
        "/api/",
        lambda t: {"grant_type": "refresh_token", "refresh_token": t["refresh_token"]},
    ),
    "refresh at another realm's token endpoint": (
        EVIL,
        "/realms/evil/",
        lambda t: {"grant_type": "refresh_token", "refresh_token": t["refresh_token"]},
    ),
    "revoke at another realm's revocation endpoint": (
        EVIL.replace("/token", "/revoke"),
        "/realms/evil/",
        lambda t: {"token": t["access_token"]},
    ),
}


@pytest.mark.parametrize("attack", MIXUPS.values(), ids=MIXUPS.keys())
def test_tokens_are_swapped_in_only_toward_the_issuing_endpoint(
    proxy: Listeners, gateway: CannedServer, attack: tuple[str, str, Callable[[dict], dict[str, str]]]
) -> None:
    """Property 2: a gateway routes IdP (several realms) and API by path on one origin. Only the endpoint
    that issued a handle, and its revocation endpoint, get the real token swapped in: `POST /api/…/revoke
    token=<handle>` is not answered with the JWT, and another realm never sees this realm's tokens."""
    path, where, form = attack
    tokens = canned_login(proxy["gateway"])
    since = len(gateway.received)
    response = requests.post(proxy["gateway"] + path, data={**form(tokens), **CANNED_CLIENT}, timeout=30)
    assert_gateway_got_no_token(gateway, since, where)
    assert_no_token(response, **gateway_secrets(gateway))


# ---------------------------------------------------------------------------------------------------------
# Property 3: refresh replays and shared refreshes keep client authentication

THIEVES: dict[str, dict[str, object]] = {
    "wrong Basic secret": {"auth": (CLIENT["client_id"], "wrong")},
    "wrong client_secret": {"data": {"client_id": CLIENT["client_id"], "client_secret": "wrong"}},
    "no client authentication": {},
    "client_id only": {"data": {"client_id": CLIENT["client_id"]}},
}


@pytest.mark.parametrize("thief", THIEVES.values(), ids=THIEVES.keys())
def test_grace_replay_needs_the_same_client_authentication(
    proxy: Listeners, idp: ManagedProcess, thief: dict[str, object]
) -> None:
    """Property 3: a thief with a stolen, just rotated refresh handle and the wrong client authentication
    gets no replay of the rotation's answer: the request goes to the authorization server, whose verdict
    (401 invalid_client) it gets."""
    stolen = demo_login(proxy["idp"])["refresh_token"]
    assert demo_refresh(proxy["idp"], stolen, auth=BASIC).status_code == 200  # the owner rotates it
    before = stats(idp)["token"]["refresh_token"]
    replay = demo_refresh(proxy["idp"], stolen, **dict(thief))
    assert "access_token" not in replay.text
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_client", replay.text
    assert stats(idp)["token"]["refresh_token"] == before + 1, "the authorization server was not asked"


def test_grace_replay_with_the_same_client_authentication_still_works(proxy: Listeners) -> None:
    """Property 3 (regression): two tabs of the same client refreshing at once both get the new handles."""
    refresh = demo_login(proxy["idp"])["refresh_token"]
    first = demo_refresh(proxy["idp"], refresh, auth=BASIC)
    second = demo_refresh(proxy["idp"], refresh, auth=BASIC)
    assert first.status_code == second.status_code == 200, second.text
    assert second.json()["refresh_token"] == first.json()["refresh_token"]
    assert second.json()["access_token"] == first.json()["access_token"]


def test_shared_refresh_needs_the_same_client_authentication(
    proxy: Listeners, slow_idp: ManagedProcess
) -> None:
    """Property 3: a thief refreshing a stolen handle with the wrong secret while its owner's refresh is in
    flight does not get the owner's answer."""
    stolen = demo_login(proxy["slow_idp"])["refresh_token"]
    before = stats(slow_idp)["token"]["refresh_token"]
    with ThreadPoolExecutor(1) as pool:
        owner = pool.submit(demo_refresh, proxy["slow_idp"], stolen, auth=BASIC)
        wait_until(lambda: stats(slow_idp)["token"]["refresh_token"] > before, "the owner's refresh arrived")
        thief = demo_refresh(proxy["slow_idp"], stolen, auth=(CLIENT["client_id"], "wrong"))
        assert owner.result().status_code == 200
    assert "access_token" not in thief.text
    assert thief.status_code == 401, thief.text


def test_grace_replay_needs_the_same_client_assertion(proxy: Listeners) -> None:
    """Property 3: private_key_jwt clients: another client_assertion gets no replay."""

    def assertion(jti: str) -> dict[str, str]:
        claims = {"iss": "canned-client", "sub": "canned-client", "jti": jti, "exp": int(time.time()) + 60}
        return {"client_id": "canned-client", "client_assertion_type": CLIENT_ASSERTION_TYPE,
                "client_assertion": sign(claims)}  # fmt: skip

    owner = assertion("owner")
    form = {"grant_type": "password", "username": "victim", "password": "pw", **owner}
    login = requests.post(proxy["gateway"] + TOKEN_PATH, data=form, timeout=30).json()
    refresh = {"grant_type": "refresh_token", "refresh_token": login["refresh_token"]}
    rotated = requests.post(proxy["gateway"] + TOKEN_PATH, data={**refresh, **owner}, timeout=30)
    assert rotated.status_code == 200, rotated.text
    replay = requests.post(proxy["gateway"] + TOKEN_PATH, data={**refresh, **assertion("thief")}, timeout=30)
    assert replay.status_code >= 400 and "access_token" not in replay.text, replay.text


# ---------------------------------------------------------------------------------------------------------
# Property 4: revocation means logout


def assert_chain_dead(gateway: CannedServer, minted_before: set[str]) -> None:
    """No refresh token issued since ``minted_before`` can still be used at the authorization server."""
    with gateway.lock:
        alive = [
            t
            for t, s in gateway.issued_refresh.items()
            if t not in minted_before and not (s.used or s.revoked)
        ]
    assert not alive, (
        f"{len(alive)} real refresh token(s) of the chain still alive at the authorization server"
    )


def test_revoking_a_rotated_refresh_handle_logs_out(proxy: Listeners, gateway: CannedServer) -> None:
    """Property 4: revoking a refresh handle in its grace period revokes the chain's current refresh token at
    the authorization server, and the current handle dies too."""
    minted_before = set(gateway.issued_refresh)
    first = canned_login(proxy["gateway"])["refresh_token"]
    current = canned_refresh(proxy["gateway"], first).json()["refresh_token"]
    assert revoke(proxy["gateway"], first, data=CANNED_CLIENT).status_code == 200
    after = canned_refresh(proxy["gateway"], current)
    assert after.status_code == 400, "the chain's current refresh handle still refreshes"
    assert_chain_dead(gateway, minted_before)


def test_revoking_the_current_refresh_handle_ends_the_grace_replay(
    proxy: Listeners, gateway: CannedServer
) -> None:
    """Property 4: once the current refresh handle is revoked, the rotated one's grace replay hands out
    nothing."""
    minted_before = set(gateway.issued_refresh)
    first = canned_login(proxy["gateway"])["refresh_token"]
    current = canned_refresh(proxy["gateway"], first).json()["refresh_token"]
    assert revoke(proxy["gateway"], current, data=CANNED_CLIENT).status_code == 200
    replay = canned_refresh(proxy["gateway"], first)
    assert replay.status_code == 400 and "access_token" not in replay.text, replay.text
    assert_chain_dead(gateway, minted_before)


def revoke_during_a_refresh(refresher: Listeners, revoker: Listeners, gateway: CannedServer) -> None:
    """A refresh through ``refresher`` that the authorization server takes 1.5 s to answer, and meanwhile a
    revocation of its handle through ``revoker``: no live refresh handle comes back through either, and
    nothing of the chain stays alive at the authorization server."""
    minted_before = set(gateway.issued_refresh)
    refresh = canned_login(refresher["gateway"])["refresh_token"]
    since = len(gateway.received)

    def refresh_arrived() -> bool:
        return any(r.form().get("grant_type") == "refresh_token" for r in gateway.received[since:])

    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(canned_refresh, refresher["gateway"], refresh, delay="1.5")
        wait_until(refresh_arrived, "the refresh reached the authorization server")
        assert revoke(revoker["gateway"], refresh, data=CANNED_CLIENT).status_code == 200
        answer = slow.result()
    if answer.status_code == 200 and "refresh_token" in answer.json():
        for through in (refresher, revoker):
            again = canned_refresh(through["gateway"], answer.json()["refresh_token"])
            assert again.status_code == 400, "the refresh handle came back alive after its revocation"
    assert_chain_dead(gateway, minted_before)


def test_revocation_during_a_refresh_wins(proxy: Listeners, gateway: CannedServer) -> None:
    """Property 4: a revocation that lands while a refresh of the same handle is in flight wins."""
    revoke_during_a_refresh(proxy, proxy, gateway)


def test_revocation_through_another_proxy_during_a_refresh_wins(
    proxy: Listeners, idp: ManagedProcess, api: ManagedProcess, gateway: CannedServer
) -> None:
    """Property 4 across proxies on one store: a revocation sent to a second proxy while the first has the
    handle's refresh upstream waits for that refresh (its lease), then revokes the refresh token the refresh
    brought. Without the wait the second proxy revokes the used one, and the new one stays alive upstream."""
    upstreams = {"idp": url(idp), "api": url(api), "gateway": gateway.url}
    with listeners(upstreams, proxy.store) as second:
        revoke_during_a_refresh(proxy, second, gateway)


# ---------------------------------------------------------------------------------------------------------
# Property 5: what the proxy swapped in never comes back


def quoted(token: str, style: str, status: int = 400) -> Answer:
    """An answer (an error by default) that quotes ``token``, the way an error page might."""
    match style:
        case "plain":
            text = f"bad {token}"
        case "JSON-escaped":
            text = "bad " + "".join(f"\\u{ord(c):04x}" for c in token)
        case "percent-encoded":
            text = "bad " + "".join(f"%{b:02X}" for b in token.encode())
        case "in a header":
            return status, {"X-Debug": f"token={token}"}, b'{"error": "invalid_grant"}'
        case _:
            raise AssertionError(style)
    # Written by hand, not json.dumps: the escapes must reach the client as the server wrote them.
    return status, {}, f'{{"error": "invalid_grant", "error_description": "{text}"}}'.encode()


QUOTE_STYLES = ["plain", "JSON-escaped", "percent-encoded", "in a header"]


def swapped_in(request: Received) -> str:
    form = request.form()
    return form.get("refresh_token") or form["token"]


@pytest.mark.parametrize("style", QUOTE_STYLES)
@pytest.mark.parametrize("kind", ["opaque", "jws"])
def test_refresh_errors_quoting_the_refresh_token(
    proxy: Listeners, gateway: CannedServer, kind: str, style: str
) -> None:
    """Property 5: an error answer to a refresh that quotes the refresh token the proxy swapped in, in any
    form, does not hand it to the client."""
    refresh = canned_login(proxy["gateway"], refresh_kind=kind)["refresh_token"]
    gateway.script.append(lambda request: quoted(swapped_in(request), style))
    response = canned_refresh(proxy["gateway"], refresh)
    real = swapped_in(gateway.received[-1])
    assert real != refresh
    assert_no_token(response, real=[real], claims=SECRET_CLAIMS.values())


def test_refresh_answers_quoting_the_old_refresh_token(proxy: Listeners, gateway: CannedServer) -> None:
    """Property 5: a 2xx refresh answer that echoes the refresh token it was sent, beside the new ones."""
    refresh = canned_login(proxy["gateway"])["refresh_token"]

    def answer(request: Received) -> Answer:
        body = gateway.issue(request.client(), "opaque") | {"previous_refresh_token": swapped_in(request)}
        return 200, {}, json.dumps(body).encode()

    gateway.script.append(answer)
    response = canned_refresh(proxy["gateway"], refresh)
    assert_no_token(response, **gateway_secrets(gateway))


@pytest.mark.parametrize("style", [*QUOTE_STYLES, "200, in the body"])
@pytest.mark.parametrize("kind", ["opaque refresh token", "JWS refresh token", "access token"])
def test_revocation_answers_quoting_the_token(
    proxy: Listeners, gateway: CannedServer, kind: str, style: str
) -> None:
    """Property 5: a revocation answer (error or not) that quotes the token the proxy swapped in, in any
    form, does not hand it to the client."""
    tokens = canned_login(proxy["gateway"], refresh_kind="jws" if kind == "JWS refresh token" else "opaque")
    handle = tokens["access_token" if kind == "access token" else "refresh_token"]

    def answer(request: Received) -> Answer:
        if style == "200, in the body":
            return 200, {}, json.dumps({"revoked": swapped_in(request)}).encode()
        return quoted(swapped_in(request), style)

    gateway.script.append(answer)
    response = revoke(proxy["gateway"], handle, data=CANNED_CLIENT)
    real = swapped_in(gateway.received[-1])
    assert real != handle
    assert_no_token(response, real=[real], claims=SECRET_CLAIMS.values())


# ---------------------------------------------------------------------------------------------------------
# Property 6: every readable part of a token counts


def b64(data: object) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


HEADER = b64({"alg": "RS256", "typ": "JWT", "kid": "k1"})
# The secret claims first, so that a body cut short still shows them.
PAYLOAD = b64({**SECRET_CLAIMS, "sub": "victim", "exp": int(time.time()) + 3600})
SIGNATURE = b64(b"s" * 64)
JWT = f"{HEADER}.{PAYLOAD}.{SIGNATURE}"


def as_json(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def percent_all(text: str) -> str:
    return "".join(f"%{b:02X}" for b in text.encode())


READABLE: dict[str, Answer] = {
    "JSON payload behind a non-JSON header": (
        200,
        {},
        as_json(access_token=f"{b64(b'not json')}.{PAYLOAD}.c2ln"),
    ),
    "header.payload without signature": (200, {}, as_json(access_token=f"{HEADER}.{PAYLOAD}")),
    "payload.signature": (200, {}, as_json(access_token=f"{PAYLOAD}.{SIGNATURE}")),
    "dotted value in another field": (200, {}, as_json(access_token="opaque-token", session=f"v1.{PAYLOAD}")),
    "body cut inside the payload": (200, {}, f'{{"access_token": "{HEADER}.{PAYLOAD[:60]}'.encode()),
    "body cut after the payload": (200, {}, f'{{"access_token": "{HEADER}.{PAYLOAD}'.encode()),
    "percent-encoded dots in a header": (
        200,
        {"X-Debug": JWT.replace(".", "%2E")},
        as_json(access_token="opaque-token"),
    ),
    "percent-encoded JWS in a cookie": (
        200,
        {"Set-Cookie": f"session={percent_all(JWT)}; HttpOnly"},
        as_json(access_token="opaque-token"),
    ),
}


@pytest.mark.parametrize("answer", READABLE.values(), ids=READABLE.keys())
def test_readable_token_parts_never_reach_the_client(
    proxy: Listeners, gateway: CannedServer, answer: Answer
) -> None:
    """Property 6: a dotted value any of whose segments decodes to a JSON object is readable, whatever the
    other segments, however the body ends, and in percent-encoded header values too."""
    gateway.script.append(lambda _request: answer)
    response = requests.post(proxy["gateway"] + TOKEN_PATH, data=CANNED_LOGIN, timeout=30)
    assert_no_token(response, claims=SECRET_CLAIMS.values())


UNPARSEABLE: dict[str, Answer] = {
    "JSON cut short": (200, {}, b'{"access_token": "opaque-token", "token_type": "Bear'),
    "HTML": (200, {"Content-Type": "text/html"}, b"<html><body>maintenance</body></html>"),
    "JSON array": (200, {}, b'["opaque-token"]'),
}


@pytest.mark.parametrize("answer", UNPARSEABLE.values(), ids=UNPARSEABLE.keys())
def test_unparseable_token_answers_are_refused(
    proxy: Listeners, gateway: CannedServer, answer: Answer
) -> None:
    """Property 6: a 2xx token-route answer the proxy cannot parse is refused (502), never passed on."""
    gateway.script.append(lambda _request: answer)
    response = requests.post(proxy["gateway"] + TOKEN_PATH, data=CANNED_LOGIN, timeout=30)
    assert response.status_code == 502, response.text


BOM = b"\xef\xbb\xbf"


def test_utf8_bom_json_is_read_as_clients_read_it(proxy: Listeners, gateway: CannedServer) -> None:
    """Property 6: a token answer with a UTF-8 byte-order mark, which clients parse, is split as usual."""
    gateway.script.append(
        lambda request: (200, {}, BOM + as_json(**gateway.issue(request.client(), "opaque")))
    )
    response = requests.post(proxy["gateway"] + TOKEN_PATH, data=CANNED_LOGIN, timeout=30)
    assert response.status_code == 200, response.text
    assert "." not in json.loads(response.content.decode("utf-8-sig"))["access_token"]
    assert_no_token(response, **gateway_secrets(gateway))


def test_utf8_bom_json_never_passes_a_refresh_token(proxy: Listeners, gateway: CannedServer) -> None:
    """Property 6: a byte-order mark does not make an opaque refresh token unreadable to the proxy only."""

    def answer(request: Received) -> Answer:
        refresh = gateway.mint_refresh(request.client())
        return 200, {}, BOM + as_json(access_token="opaque-token", token_type="Bearer", refresh_token=refresh)

    gateway.script.append(answer)
    response = requests.post(proxy["gateway"] + TOKEN_PATH, data=CANNED_LOGIN, timeout=30)
    assert_no_token(response, **gateway_secrets(gateway))


def exchanged(**fields: object) -> Answer:
    """An RFC 8693 token exchange answer (token_type N_A unless given: the token is no access token)."""
    return 200, {}, json.dumps({"token_type": "N_A", **fields}).encode()


def exchange(proxy: Listeners) -> requests.Response:
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": "opaque-subject",
            "subject_token_type": TOKEN_TYPE + "access_token", **CANNED_CLIENT}  # fmt: skip
    return requests.post(proxy["gateway"] + TOKEN_PATH, data=form, timeout=30)


@pytest.mark.parametrize("kind", ["opaque", "jws"])
def test_token_exchange_issuing_a_refresh_token_gives_a_refresh_handle(
    proxy: Listeners, gateway: CannedServer, kind: str
) -> None:
    """Property 6: an RFC 8693 answer is judged by issued_token_type: a refresh token in access_token
    becomes a refresh handle, which refreshes with the real token."""
    issued: list[str] = []

    def answer(request: Received) -> Answer:
        issued.append(gateway.mint_refresh(request.client(), kind))
        return exchanged(access_token=issued[0], issued_token_type=TOKEN_TYPE + "refresh_token")

    gateway.script.append(answer)
    response = exchange(proxy)
    assert response.status_code == 200, response.text
    assert_no_token(response, real=issued, claims=SECRET_CLAIMS.values())
    since = len(gateway.received)
    canned_refresh(proxy["gateway"], response.json()["access_token"])
    sent = [r.form().get("refresh_token") for r in gateway.received[since:]]
    assert sent == issued, "the handle did not refresh with the real refresh token"


@pytest.mark.parametrize("issued_type", ["access_token", "jwt"])
def test_token_exchange_issuing_a_jwt_splits_it(
    proxy: Listeners, gateway: CannedServer, issued_type: str
) -> None:
    """Property 6 (regression): an RFC 8693 answer issuing a JWT access token is split; the handle joins."""
    jwt_token = sign({"sub": "victim", "exp": int(time.time()) + 300, **SECRET_CLAIMS})
    answer = exchanged(
        access_token=jwt_token, issued_token_type=TOKEN_TYPE + issued_type, token_type="Bearer"
    )
    gateway.script.append(lambda _request: answer)
    response = exchange(proxy)
    assert response.status_code == 200, response.text
    assert_no_token(response, claims=SECRET_CLAIMS.values())
    handle = response.json()["access_token"]
    requests.get(proxy["gateway"] + "/api/me", headers={"Authorization": f"Bearer {handle}"}, timeout=30)
    assert gateway.received[-1].header("authorization") == f"Bearer {jwt_token}"


# ---------------------------------------------------------------------------------------------------------
# Property 8: safe defaults


def test_a_stream_threshold_below_the_token_limit_is_refused(tmp_path: Path) -> None:
    """Property 8: mitmproxy streams every body over stream_large_bodies, token responses included; a value
    below splittoken_max_body would let one pass unsplit, so mitmdump refuses to start with it."""
    args = [tool_path("mitmdump"), "-s", str(ADDON), "--set", f"confdir={tmp_path}", "--set", "listen_port=0"]
    done = subprocess.run(
        [*args, "--set", "stream_large_bodies=1"], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "stream_large_bodies" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_streamed_token_answers_are_split(streaming: Listeners) -> None:
    """Property 8: with large bodies streamed, a login still gets handles only."""
    response = requests.post(streaming["idp"] + TOKEN_PATH, data=ALICE, auth=BASIC, timeout=30)
    assert_no_token(response, claims=ALICE_SECRETS)


@pytest.mark.parametrize("configuration", ["proxy", "streaming"])
def test_an_api_echoing_the_jwt_gives_the_handle_back_by_default(
    request: pytest.FixtureRequest, api: ManagedProcess, configuration: str
) -> None:
    """Property 8: with default options, an API answer that repeats the JWT (the echo API does) reaches the
    client with the handle instead, streamed answers (larger than stream_large_bodies) included."""
    listening: Listeners = request.getfixturevalue(configuration)
    handle = demo_login(listening["idp"])["access_token"]
    assert "." not in handle, "the login got a JWT, not a handle"
    response = requests.get(
        listening["api"] + "/anything?pad=" + "x" * STREAMED,  # an echo larger than stream_large_bodies
        headers={"Authorization": f"Bearer {handle}"}, timeout=30,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    assert stats(api)["authorizations"][-1].endswith("." + handle), "the API did not get the JWT"
    assert_no_token(response)
    assert handle in response.text


@pytest.mark.parametrize("status", [200, 401])
@pytest.mark.parametrize("style", QUOTE_STYLES)
def test_api_answers_quoting_the_jwt_in_any_form(
    proxy: Listeners, gateway: CannedServer, canned_tokens: dict, style: str, status: int
) -> None:
    """Property 8 (and 5): an API answer or error page that quotes the JWT the proxy put in, escaped,
    percent-encoded or in a header, does not hand it to the client."""

    gateway.script.append(
        lambda request: quoted(request.header("authorization").partition(" ")[2], style, status)
    )
    handle = canned_tokens["access_token"]
    response = requests.get(
        proxy["gateway"] + "/api/me", headers={"Authorization": f"Bearer {handle}"}, timeout=30
    )
    assert gateway.received[-1].header("authorization").endswith("." + handle), "the API did not get the JWT"
    assert_no_token(response, claims=SECRET_CLAIMS.values())


PUBLIC_LOOKALIKES = {
    "well-known under an API path": "/api/.well-known/x",
    "keys under an API path": "/api/keys",
    "certs under an API path": "/api/v1/certs",
    "dot segments out of a well-known path": "/realms/demo/.well-known/../../../api/secret",
    "well-known then dot-dot": "/api/secret/.well-known/..",
    "well-known in a fragment": "/api/secret#/.well-known/x",
    "keys in a path parameter": "/api/secret;/keys",
}


@pytest.mark.parametrize("target", PUBLIC_LOOKALIKES.values(), ids=PUBLIC_LOOKALIKES.keys())
def test_public_filter_lets_only_discovery_through(
    proxy: Listeners, api: ManagedProcess, target: str
) -> None:
    """Property 8 (and 1): without a handle, only the authorization server's discovery documents and key
    sets pass; an API path that looks like one, or is spelled to, is refused before it reaches the API."""
    before = stats(api)["requests"]
    reply = send(proxy["api"], "GET", target)
    assert reply.status == 401, reply.text
    assert stats(api)["requests"] == before, "the request reached the API"


@pytest.mark.parametrize(
    "path", ["/realms/demo/.well-known/openid-configuration", "/realms/demo/protocol/openid-connect/certs"]
)
def test_discovery_and_key_sets_stay_public(proxy: Listeners, path: str) -> None:
    """Property 8 (regression): the authorization server's discovery document and key set need no handle."""
    response = requests.get(proxy["idp"] + path, timeout=30)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", ["/oauth/token.json", "/oauth/token%2Ejson", "/connect/token/v2"])
def test_a_token_request_no_filter_names_is_judged_by_its_body(
    scoped: Listeners, gateway: CannedServer, path: str
) -> None:
    """Property 1 (the class): with an API filter naming only the API, requests to the authorization
    server's listener are no API route, and a token path spelling the token filter does not know (a Rails
    format suffix, an encoded dot) used to pass unjudged: the JWT and the refresh token reached the client.
    A POST whose body is a token request is one, whatever its path."""
    access = sign({"sub": "victim", **SECRET_CLAIMS, "exp": int(time.time()) + 300})
    refresh = "opaque-refresh-" + "r" * 32
    answer = {"access_token": access, "token_type": "Bearer", "expires_in": 300, "refresh_token": refresh}
    script: Answer = (200, {"Content-Type": "application/json"}, json.dumps(answer).encode())
    gateway.script.append(lambda request: script)
    reply = requests.post(scoped["gateway"] + path, data=CANNED_LOGIN, timeout=30)
    assert reply.status_code == 200, reply.text
    assert "." not in reply.json()["access_token"]
    assert_no_token(reply, real=[access, refresh], claims=SECRET_CLAIMS.values())


def test_an_implicit_grant_never_hands_the_browser_a_jwt(
    idp: ManagedProcess, api: ManagedProcess, gateway: CannedServer, tmp_path: Path
) -> None:
    """Property 1 (the class): an authorization endpoint answering the implicit grant puts the access token in
    its redirect. A proxy that has seen no token endpoint yet lets the page through (the public filter), and
    must still not let the JWT out with it: refused (502), in a redirect or a form_post page."""
    leaked = sign({"sub": "victim", "email": "victim@example.com", "exp": int(time.time()) + 300})
    answers: list[Answer] = [
        (302, {"Location": f"https://app.example/cb#access_token={leaked}&token_type=Bearer"}, b""),
        (200, {"Content-Type": "text/html"}, f'<input name="access_token" value="{leaked}">'.encode()),
    ]
    upstreams = {"idp": url(idp), "api": url(api), "gateway": gateway.url}
    with listeners(upstreams, tmp_path / "store") as cold:
        for answer in answers:
            gateway.script.append(lambda request, answer=answer: answer)
            reply = requests.get(
                cold["gateway"] + "/authorize?client_id=spa&response_type=token", allow_redirects=False,
                timeout=30,
            )  # fmt: skip
            assert reply.status_code == 502, reply.text
            assert leaked not in reply.text and leaked not in reply.headers.get("location", "")


# ---------------------------------------------------------------------------------------------------------
# Property 9: small things a new user hits


@pytest.mark.parametrize("configuration", ["scoped", "streaming"])
def test_the_store_directory_is_private(request: pytest.FixtureRequest, configuration: str) -> None:
    """Property 9: the store directory is created with mode 0700 (a splittoken_store directory, and the
    default one under confdir)."""
    listening: Listeners = request.getfixturevalue(configuration)
    assert listening.store.is_dir()
    assert stat.S_IMODE(os.stat(listening.store).st_mode) == 0o700


def test_demo_says_a_stolen_handle_is_still_a_bearer_credential() -> None:
    """Property 9: `make demo` (scripts/demo.py) says plainly that a stolen handle is still a bearer
    credential until it expires or is revoked."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")], capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL, check=False, env=os.environ | {"COLUMNS": "200"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    # As a reader reads it: without the panels' box drawing, line breaks or case.
    said = " ".join(re.sub(r"[\u2500-\u257f]", " ", result.stdout).split()).lower()
    assert "bearer credential" in said and re.search(r"\b(stolen|steals?)\b", said), (
        "the demo does not say it"
    )
    assert "expire" in said and "revoke" in said


@pytest.mark.parametrize("target", ["run", "web"])
def test_make_passes_extra_mitmproxy_options(target: str) -> None:
    """Property 9: `make run ARGS="--set …"` and `make web ARGS=…` hand the options to mitmproxy: an
    option the addon refuses stops the stack, naming the option."""
    process = start_process(
        ["make", "-s", "-C", str(ROOT), target, "ARGS=--set splittoken_max_ttl=0"],
        re.compile(r"splittoken_max_ttl|splittoken demo stack is up"), timeout=120,
    )  # fmt: skip
    try:
        up = "splittoken demo stack is up" in process.output()
        code = process.proc.wait(60) if not up else None
    finally:
        process.stop()
    assert not up, "the stack came up: ARGS did not reach mitmproxy"
    assert code != 0


def test_readme_admin_commands_run_as_written(tmp_path: Path) -> None:
    """Property 9: the README's admin CLI lines work as written, with the project's interpreter."""
    commands, fenced = [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif fenced and "splittoken_admin" in line and re.search(r"\bstats\b", line):
            commands.append(line.split("#", 1)[0].strip())
    assert commands, "the README shows no admin stats command"
    command = re.sub(r"--store \S+", f"--store {tmp_path / 'store'}", commands[0])
    result = subprocess.run(
        ["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{command!r} failed:\n{result.stdout}{result.stderr}"
    assert "records=" in result.stdout
