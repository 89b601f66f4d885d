"""DPoP-bound handles end to end (issue 13): real mitmdump processes in front of the demo identity provider
and the echo API, a real DPoP client (requests-oauth2client) for the good path, hand-made proofs for the
thief and for every broken spelling.

What reached the API is read from the echo API's own request count: a refused request must not reach it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from requests.structures import CaseInsensitiveDict
from requests_oauth2client import DPoPKey, DPoPToken, OAuth2Client

from oidc_provider import POST_CLIENT
from oidc_provider import PROXY_OPTIONS as OIDC_PROXY_OPTIONS
from oidc_provider import TOKEN_PATH as OIDC_TOKEN_PATH
from procs import ManagedProcess, free_port
from splittoken import dpop
from stack import CLIENT, DEMO_OPTIONS, REVOKE_PATH, TOKEN_PATH, Proxy, start_idp, start_proxy

pytestmark = pytest.mark.e2e

KEY = ec.generate_private_key(ec.SECP256R1())
THIEF_KEY = ec.generate_private_key(ec.SECP256R1())
JKT = dpop.thumbprint(dpop.public_jwk(KEY))
PASSWORD = {"grant_type": "password", "username": "alice", "password": "alice-pw", **CLIENT}


@contextlib.contextmanager
def running_proxy(idp: ManagedProcess, api: ManagedProcess, store: Path, **options: str) -> Iterator[Proxy]:
    assert idp.url and api.url
    started = start_proxy(idp.url, api.url, store=str(store), options={**DEMO_OPTIONS, **options})
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dpop") / "store"


@pytest.fixture(scope="module")
def proxy(idp: ManagedProcess, api: ManagedProcess, store: Path) -> Iterator[Proxy]:
    with running_proxy(idp, api, store) as started:
        yield started


@pytest.fixture(scope="module")
def binding_idp() -> Iterator[ManagedProcess]:
    with start_idp("--dpop-bind") as process:
        yield process


def token_url(proxy: Proxy) -> str:
    return proxy.idp_url + TOKEN_PATH


def api_url(proxy: Proxy, path: str = "/orders") -> str:
    return proxy.api_url + path


def login(proxy: Proxy, key: Any = KEY, **form: str) -> dict[str, Any]:
    """A password grant through the proxy, with a proof of ``key``; the client's token response."""
    proof = dpop.make_proof(key, "POST", token_url(proxy))
    answer = requests.post(token_url(proxy), data={**PASSWORD, **form}, headers={"DPoP": proof}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def call(proxy: Proxy, *headers: tuple[str, str], path: str = "/orders") -> requests.Response:
    """A GET to the API listener with exactly these header fields."""
    return send(api_url(proxy, path), "GET", headers)


def send(url: str, method: str, headers: tuple[tuple[str, str], ...], body: bytes = b"") -> requests.Response:
    """http.client sends repeated header names as given, where requests would fold them into one."""
    where = urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname or "", where.port, timeout=10)
    try:
        connection.putrequest(method, where.path)
        for name, value in headers:
            connection.putheader(name, value)
        if body:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body or None)
        raw = connection.getresponse()
        response = requests.Response()
        response.status_code = raw.status
        response.headers = CaseInsensitiveDict(raw.getheaders())
        response._content = raw.read()
        return response
    finally:
        connection.close()


def proven(proxy: Proxy, handle: str, key: Any = KEY, **proof: Any) -> tuple[tuple[str, str], ...]:
    url = proof.pop("url", api_url(proxy))
    made = dpop.make_proof(
        key, proof.pop("method", "GET"), url, access_token=proof.pop("ath", handle), **proof
    )
    return (("Authorization", f"DPoP {handle}"), ("DPoP", made))


def echo_count(api: ManagedProcess) -> int:
    assert api.url
    return requests.get(api.url + "/_stats", timeout=5).json()["requests"]


def forwarded(response: requests.Response) -> dict[str, list[str]]:
    """The header fields the API received, by lower-case name."""
    assert response.status_code == 200, response.text
    received: dict[str, list[str]] = {}
    for name, value in response.json()["headers"]:
        received.setdefault(name.lower(), []).append(value)
    return received


def assert_refused_here(response: requests.Response, error: str) -> None:
    """401 from the proxy with a DPoP challenge (RFC 9449 §7.1) naming ``error`` and the algorithms."""
    assert response.status_code == 401, response.text
    assert response.json()["error"] == error
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith(f'DPoP error="{error}"'), challenge
    assert 'algs="RS256 ' in challenge


# ---------------------------------------------------------------------------------------------------------
# The good path, with a real DPoP client


def test_a_dpop_client_logs_in_calls_refreshes_and_revokes(proxy: Proxy, api: ManagedProcess) -> None:
    client = OAuth2Client(
        token_endpoint=token_url(proxy), revocation_endpoint=proxy.idp_url + REVOKE_PATH,
        auth=(CLIENT["client_id"], CLIENT["client_secret"]),
        testing=True,  # plain http on loopback
    )  # fmt: skip
    key = DPoPKey.generate(alg="ES256")
    token = client.resource_owner_password("alice", "alice-pw", dpop=True, dpop_key=key)
    assert isinstance(token, DPoPToken) and token.token_type == "DPoP"
    assert not token.access_token.startswith("eyJ")  # a handle, not the JWT

    answer = requests.get(api_url(proxy), auth=token, timeout=10)
    received = forwarded(answer)
    (authorization,) = received["authorization"]
    scheme, _, jwt_sent = authorization.partition(" ")
    assert scheme == "Bearer" and jwt_sent.endswith(token.access_token)
    assert jwt.decode(jwt_sent, options={"verify_signature": False})["sub"]
    assert "dpop" not in received  # the proof stays at the proxy

    refreshed = client.refresh_token(token)
    assert isinstance(refreshed, DPoPToken) and refreshed.token_type == "DPoP"
    assert refreshed.refresh_token != token.refresh_token
    assert requests.get(api_url(proxy), auth=refreshed, timeout=10).status_code == 200

    client.revoke_access_token(refreshed)
    before = echo_count(api)
    gone = call(proxy, *proven(proxy, refreshed.access_token, key=_private(key)))
    assert_refused_here(gone, "invalid_token")
    assert echo_count(api) == before


def _private(key: DPoPKey) -> Any:
    """The library's key as a cryptography key, for hand-made proofs with it."""
    return key.private_key.cryptography_key


# ---------------------------------------------------------------------------------------------------------
# The thief: the handles, and every proof it saw


def test_a_thief_with_the_handles_and_a_seen_proof_gets_401_everywhere(
    proxy: Proxy, api: ManagedProcess
) -> None:
    body = login(proxy)
    handle, refresh_handle = body["access_token"], body["refresh_token"]
    assert body["token_type"] == "DPoP"
    seen = proven(proxy, handle)
    assert call(proxy, *seen).status_code == 200  # the owner's call, which the thief saw

    before = echo_count(api)
    assert_refused_here(call(proxy, ("Authorization", f"Bearer {handle}")), "invalid_token")
    assert_refused_here(call(proxy, ("Authorization", f"DPoP {handle}")), "invalid_dpop_proof")
    assert_refused_here(call(proxy, *seen), "invalid_dpop_proof")  # replayed: its jti was used
    assert_refused_here(call(proxy, *proven(proxy, handle, key=THIEF_KEY)), "invalid_dpop_proof")
    assert echo_count(api) == before

    for thief_proof in ({}, {"DPoP": dpop.make_proof(THIEF_KEY, "POST", token_url(proxy))}):
        refresh = {"grant_type": "refresh_token", "refresh_token": refresh_handle, **CLIENT}
        stolen = requests.post(token_url(proxy), data=refresh, headers=thief_proof, timeout=10)
        assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_dpop_proof", stolen.text

    # The owner's refresh handle still works, with the owner's key.
    owner = dpop.make_proof(KEY, "POST", token_url(proxy))
    refresh = {"grant_type": "refresh_token", "refresh_token": refresh_handle, **CLIENT}
    renewed = requests.post(token_url(proxy), data=refresh, headers={"DPoP": owner}, timeout=10)
    assert renewed.status_code == 200, renewed.text
    assert call(proxy, *proven(proxy, renewed.json()["access_token"])).status_code == 200


def test_a_bearer_handle_still_works_as_bearer(proxy: Proxy) -> None:
    answer = requests.post(token_url(proxy), data=PASSWORD, timeout=10).json()
    assert answer["token_type"] == "Bearer"
    assert call(proxy, ("Authorization", f"Bearer {answer['access_token']}")).status_code == 200
    assert_refused_here(call(proxy, *proven(proxy, answer["access_token"])), "invalid_token")


def test_a_proof_used_at_one_proxy_is_refused_by_another_on_the_same_store(
    proxy: Proxy, idp: ManagedProcess, api: ManagedProcess, store: Path
) -> None:
    handle = login(proxy)["access_token"]
    proof = proven(proxy, handle)
    assert call(proxy, *proof).status_code == 200
    with running_proxy(idp, api, store) as second:
        # The second proxy listens elsewhere: the proof names its URL, with the jti the first one saw.
        _, made = proof
        claims = jwt.decode(made[1], options={"verify_signature": False})
        same_jti = proven(second, handle, jti=claims["jti"])
        assert_refused_here(call(second, *same_jti), "invalid_dpop_proof")
        assert call(second, *proven(second, handle)).status_code == 200


@pytest.mark.parametrize(
    "wrong",
    [
        pytest.param({"method": "POST"}, id="htm"),
        pytest.param({"url": "upstream"}, id="htu-upstream"),
        pytest.param({"url": "token-listener"}, id="htu-other-listener"),
        pytest.param({"url": "/other"}, id="htu-other-path"),
        pytest.param({"ath": "YW5vdGhlci1oYW5kbGU"}, id="ath"),
        pytest.param({"iat": "future"}, id="iat-future"),
        pytest.param({"iat": "past"}, id="iat-past"),
    ],
)
def test_a_proof_for_another_request_is_refused(
    proxy: Proxy, api: ManagedProcess, wrong: dict[str, Any]
) -> None:
    handle = login(proxy)["access_token"]
    assert api.url
    urls = {"upstream": api.url + "/orders", "token-listener": proxy.idp_url + "/orders"}
    if "url" in wrong:
        wrong["url"] = urls.get(wrong["url"], proxy.api_url + wrong["url"])
    if "iat" in wrong:
        wrong["iat"] = time.time() + (120 if wrong["iat"] == "future" else -120)
    before = echo_count(api)
    assert_refused_here(call(proxy, *proven(proxy, handle, **wrong)), "invalid_dpop_proof")
    assert echo_count(api) == before


# ---------------------------------------------------------------------------------------------------------
# Spellings an attacker may try


def test_scheme_and_header_names_are_case_insensitive(proxy: Proxy) -> None:
    handle = login(proxy)["access_token"]
    for scheme, header in (("dpop", "dpop"), ("DPOP", "DPOP"), ("DPoP", "Dpop")):
        made = dpop.make_proof(KEY, "GET", api_url(proxy), access_token=handle)
        answer = call(proxy, ("Authorization", f"{scheme} {handle}"), (header, made))
        assert answer.status_code == 200, (scheme, header, answer.text)
        assert "dpop" not in forwarded(answer)


def test_two_proofs_or_two_credentials_are_refused(proxy: Proxy, api: ManagedProcess) -> None:
    handle = login(proxy)["access_token"]
    (authorization, proof), (_, other) = proven(proxy, handle), proven(proxy, handle)
    before = echo_count(api)
    assert_refused_here(call(proxy, authorization, proof, ("DPoP", other[1])), "invalid_dpop_proof")
    joined = ("DPoP", f"{proof[1]}, {other[1]}")
    assert_refused_here(call(proxy, authorization, joined), "invalid_dpop_proof")
    twice = call(proxy, authorization, authorization, proof)
    assert twice.status_code == 400 and twice.json()["error"] == "invalid_request"
    assert_refused_here(call(proxy, ("Authorization", f"DPoP {handle} {handle}"), proof), "invalid_token")
    assert_refused_here(call(proxy, ("Authorization", f"DPoP {proof[1]}"), proof), "invalid_token")
    assert echo_count(api) == before


def test_two_proofs_on_a_token_request_are_refused(proxy: Proxy) -> None:
    form = urlencode(PASSWORD).encode()
    content_type = ("Content-Type", "application/x-www-form-urlencoded")
    first, second = (dpop.make_proof(KEY, "POST", token_url(proxy)) for _ in range(2))
    for proofs in ((("DPoP", first), ("dpop", second)), (("DPoP", f"{first},{second}"),)):
        answer = send(token_url(proxy), "POST", (content_type, *proofs), form)
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_dpop_proof", answer.text


def test_htu_query_fragment_and_spelling_are_normalised(
    idp: ManagedProcess, api: ManagedProcess, tmp_path: Path
) -> None:
    """Behind a load balancer: the public URL names the listener; htu matches it however it is spelled
    (RFC 9449 §4.3: no query or fragment, RFC 3986 §6.2.2 and §6.2.3), and only it."""
    assert idp.url and api.url
    ports = (free_port(), free_port(), free_port())
    options = {**DEMO_OPTIONS, "splittoken_public_urls": f"https://api.example.test@{ports[1]}"}
    started = start_proxy(idp.url, api.url, store=str(tmp_path / "store"), ports=ports, options=options)
    try:
        handle = login(started)["access_token"]
        for spelling in (
            "https://API.Example.TEST:443/orders?x=1",
            "https://api.example.test/orders#frag",
            "HTTPS://api.example.test/./orders",
            "https://api.example.test/%6Frders",
        ):
            answer = call(started, *proven(started, handle, url=spelling))
            assert answer.status_code == 200, (spelling, answer.text)
        for wrong in (
            "http://api.example.test/orders",
            "https://api.example.test:8443/orders",
            "https://api.example.test/orders/",
            started.api_url + "/orders",  # where it listens is not what the client used
        ):
            refused = call(started, *proven(started, handle, url=wrong))
            assert_refused_here(refused, "invalid_dpop_proof")
    finally:
        started.stop()


HOSTILE_PROOFS = [
    "",
    ",",
    "a.b.c",
    "x" * 9000,
    "eyJhbGciOiJub25lIiwidHlwIjoiZHBvcCtqd3QifQ.e30.",
    "eyJhbGciOiJub25lIn0.e30.sig",
    "\u00e9.\u00e9.\u00e9",
    "e30.e30.e30",
    "a..b",
]


@pytest.mark.parametrize("value", HOSTILE_PROOFS)
def test_hostile_proof_headers_neither_crash_nor_join(proxy: Proxy, api: ManagedProcess, value: str) -> None:
    handle = login(proxy)["access_token"]
    before = echo_count(api)
    encoded = value.encode("utf-8").decode("latin-1")
    answer = call(proxy, ("Authorization", f"DPoP {handle}"), ("DPoP", encoded))
    assert_refused_here(answer, "invalid_dpop_proof")
    assert echo_count(api) == before
    assert call(proxy, *proven(proxy, handle)).status_code == 200  # and the proxy is still there


def test_an_hmac_or_private_key_proof_is_refused(proxy: Proxy) -> None:
    handle = login(proxy)["access_token"]
    claims = {"jti": "j1", "htm": "GET", "htu": api_url(proxy), "iat": int(time.time())}
    claims["ath"] = dpop.access_token_hash(handle)
    hmac = jwt.encode(claims, "k" * 32, algorithm="HS256", headers={"typ": "dpop+jwt"})
    private = dict(dpop.public_jwk(KEY), d="AAAA")
    leaky = jwt.encode(
        claims | {"jti": "j2"}, KEY, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": private}
    )
    for proof in (hmac, leaky):
        assert_refused_here(
            call(proxy, ("Authorization", f"DPoP {handle}"), ("DPoP", proof)), "invalid_dpop_proof"
        )


# ---------------------------------------------------------------------------------------------------------
# Modes and authorization servers that bind themselves


def test_required_refuses_token_requests_without_a_proof(
    idp: ManagedProcess, api: ManagedProcess, tmp_path: Path
) -> None:
    with running_proxy(idp, api, tmp_path / "store", splittoken_dpop="required") as started:
        refused = requests.post(token_url(started), data=PASSWORD, timeout=10)
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_dpop_proof", refused.text
        assert login(started)["token_type"] == "DPoP"


def test_a_server_that_binds_to_the_proofs_key(
    binding_idp: ManagedProcess, api: ManagedProcess, tmp_path: Path
) -> None:
    with running_proxy(binding_idp, api, tmp_path / "store") as started:
        body = login(started)
        assert body["token_type"] == "DPoP"
        answer = call(started, *proven(started, body["access_token"]))
        (authorization,) = forwarded(answer)["authorization"]
        claims = jwt.decode(authorization.partition(" ")[2], options={"verify_signature": False})
        assert claims["cnf"] == {"jkt": JKT}  # the server saw the same proof, unchanged
        assert_refused_here(
            call(started, ("Authorization", f"Bearer {body['access_token']}")), "invalid_token"
        )


def test_a_server_that_binds_to_another_key_is_refused(
    binding_idp: ManagedProcess, api: ManagedProcess, tmp_path: Path
) -> None:
    other = dpop.thumbprint(dpop.public_jwk(THIEF_KEY))
    with running_proxy(binding_idp, api, tmp_path / "store") as started:
        proof = dpop.make_proof(KEY, "POST", token_url(started))
        data = {**PASSWORD, "bind_jkt": other}
        answer = requests.post(token_url(started), data=data, headers={"DPoP": proof}, timeout=10)
        assert answer.status_code == 502, answer.text
        assert "eyJ" not in answer.text and "access_token" not in json.loads(answer.text)


def test_a_dpop_client_follows_the_proxys_nonces(
    idp: ManagedProcess, api: ManagedProcess, tmp_path: Path
) -> None:
    """RFC 9449 §8 and §9 with a real client: use_dpop_nonce at the token endpoint (400) and at the API
    (401), each with DPoP-Nonce; the library retries with the nonce, and the retry goes through."""
    with running_proxy(idp, api, tmp_path / "store", splittoken_dpop_nonce="true") as started:
        client = OAuth2Client(
            token_endpoint=token_url(started),
            auth=(CLIENT["client_id"], CLIENT["client_secret"]),
            testing=True,
        )
        key = DPoPKey.generate(alg="ES256")
        token = client.resource_owner_password("alice", "alice-pw", dpop=True, dpop_key=key)
        assert isinstance(token, DPoPToken) and key.as_nonce
        answer = requests.get(api_url(started), auth=token, timeout=10)
        assert answer.status_code == 200, answer.text
        assert key.rs_nonce == key.as_nonce  # one nonce per window, for both routes
        without = call(started, *proven(started, token.access_token, key=_private(key)))
        assert_refused_here(without, "use_dpop_nonce")
        assert without.headers["DPoP-Nonce"] == key.as_nonce


def test_oidc_provider_binds_to_the_same_key(
    oidc_provider: ManagedProcess, api: ManagedProcess, tmp_path: Path
) -> None:
    """A real authorization server with DPoP (panva's oidc-provider): the proof reaches it unchanged, it
    binds the JWT to the proof's key (cnf.jkt), and the proxy binds the handle to the same thumbprint."""
    with running_proxy(oidc_provider, api, tmp_path / "store", **OIDC_PROXY_OPTIONS) as started:
        url = started.idp_url + OIDC_TOKEN_PATH
        proof = {"DPoP": dpop.make_proof(KEY, "POST", url)}
        answer = POST_CLIENT.post(url, {"grant_type": "client_credentials"}, proof)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["token_type"] == "DPoP"
        received = call(started, *proven(started, body["access_token"]))
        (authorization,) = forwarded(received)["authorization"]
        claims = jwt.decode(authorization.partition(" ")[2], options={"verify_signature": False})
        assert claims["cnf"] == {"jkt": JKT}
        assert_refused_here(
            call(started, ("Authorization", f"Bearer {body['access_token']}")), "invalid_token"
        )
