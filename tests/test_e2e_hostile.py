"""End to end against a hostile authorization server: whatever it answers, the client never gets a JWT.

The "authorization server" here is a canned HTTP server inside the test process that answers each token
request with the next body the test gives it; mitmdump with the addon sits in front of it for real.
"""

from __future__ import annotations

import gzip
import http.server
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from procs import ManagedProcess
from stack import TOKEN_PATH, Proxy, start_proxy

pytestmark = pytest.mark.e2e

JWS_RE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
CLAIMS = {"sub": "victim", "email": "victim@example.com", "tenant": "secret-tenant"}


class CannedServer(http.server.ThreadingHTTPServer):
    """Answers ``GET /certs`` with ``self.jwks`` and every other request with ``self.answer``."""

    daemon_threads = True
    answer: tuple[int, dict[str, str], bytes] = (200, {}, b"{}")
    jwks: bytes = b'{"keys": []}'


class CannedHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        assert isinstance(self.server, CannedServer)
        status, headers, body = self.server.answer
        if self.path == "/certs":
            status, headers, body = 200, {}, self.server.jwks
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def canned() -> Iterator[CannedServer]:
    server = CannedServer(("127.0.0.1", 0), CannedHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def proxy(
    canned: CannedServer, api: ManagedProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    assert api.url
    store = str(tmp_path_factory.mktemp("store"))
    started = start_proxy(
        f"http://127.0.0.1:{canned.server_address[1]}", api.url, store=store,
        options={"splittoken_max_body": str(256 * 1024)},
    )  # fmt: skip
    yield started
    output = started.output()
    started.stop()
    # A stolen log yields nothing: no token of any test reached mitmdump's output.
    assert not JWS_RE.search(output), output


def token(alg: str = "RS256", **claims: object) -> str:
    key = {"RS256": RSA_KEY, "HS256": "s" * 32, "ES256": ec.generate_private_key(ec.SECP256R1())}[alg]
    return jwt.encode({**CLAIMS, "exp": int(time.time()) + 300, **claims}, key, algorithm=alg)


def b64(data: bytes) -> str:
    return jwt.utils.base64url_encode(data).decode()


def unsigned() -> str:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(CLAIMS).encode())}."


def fetch(proxy: Proxy, canned: CannedServer, status: int, body: bytes, **headers: str) -> requests.Response:
    canned.answer = (status, headers, body)
    grant = {"grant_type": "client_credentials", "client_id": "c"}  # a client identifies itself
    return requests.post(proxy.idp_url + TOKEN_PATH, data=grant, timeout=15)


def assert_no_leak(response: requests.Response) -> None:
    text = response.content.decode("utf-8", "replace")
    assert not JWS_RE.search(text)
    for value in CLAIMS.values():
        assert value not in text


def as_json(**fields: object) -> bytes:
    return json.dumps(fields).encode()


REFUSED = {
    "alg none": as_json(access_token=unsigned(), token_type="Bearer"),
    "alg NONE, signature present": as_json(access_token=unsigned().replace("bm9uZS", "Tk9ORS") + "abc"),
    "empty signature": as_json(access_token=token().rsplit(".", 1)[0] + "."),
    "already expired": as_json(access_token=token(exp=int(time.time()) - 60)),
    "payload not base64url JSON": as_json(access_token=token().split(".")[0] + ".e30x!.sig"),
    "payload not JSON": as_json(access_token=token().split(".")[0] + "." + b64(b"{not json") + ".sig"),
    "JWT nested in another field": as_json(access_token="opaque", data={"access_token": token()}),
    "JWT in an unknown field": as_json(access_token="opaque", debug=f"issued {token()} for you"),
    "JWT in a list": as_json(access_token=[token()]),
    "duplicate access_token": b'{"access_token": "%s", "access_token": "opaque"}' % token().encode(),
    "HTML with a JWT": f"<html><body>token={token()}</body></html>".encode(),
    "truncated JSON with a JWT": as_json(access_token=token())[:-5],
    "refresh_token not a string": as_json(access_token=token(), refresh_token={"t": token()}),
}


@pytest.mark.parametrize("body", REFUSED.values(), ids=REFUSED.keys())
def test_tokens_the_proxy_refuses_to_hand_on(proxy: Proxy, canned: CannedServer, body: bytes) -> None:
    response = fetch(proxy, canned, 200, body)
    assert response.status_code == 502, response.text
    assert response.json()["error"] == "server_error"
    assert_no_leak(response)


def test_oversize_responses_are_refused_unparsed(proxy: Proxy, canned: CannedServer) -> None:
    response = fetch(proxy, canned, 200, as_json(access_token=token(), pad="x" * 300_000))
    assert response.status_code == 502 and "too large" in response.json()["error_description"]
    assert_no_leak(response)


def test_gzip_bomb_is_refused(proxy: Proxy, canned: CannedServer) -> None:
    bomb = gzip.compress(b'{"access_token": "' + b"A" * 50_000_000 + b'"}')
    response = fetch(proxy, canned, 200, bomb, **{"Content-Encoding": "gzip"})
    assert response.status_code == 502
    assert_no_leak(response)


def test_broken_gzip_is_refused(proxy: Proxy, canned: CannedServer) -> None:
    response = fetch(proxy, canned, 200, b"\x1f\x8bnot gzip at all", **{"Content-Encoding": "gzip"})
    assert response.status_code == 502
    assert_no_leak(response)


def test_gzipped_json_is_split(proxy: Proxy, canned: CannedServer) -> None:
    body = gzip.compress(as_json(access_token=token(), token_type="Bearer"))
    response = fetch(proxy, canned, 200, body, **{"Content-Encoding": "gzip"})
    assert response.status_code == 200
    assert_no_leak(response)


def test_algorithms_outside_the_allowlist_are_refused(
    canned: CannedServer, api: ManagedProcess, tmp_path: Path
) -> None:
    assert api.url
    strict = start_proxy(
        f"http://127.0.0.1:{canned.server_address[1]}", api.url, store=str(tmp_path / "store"),
        options={"splittoken_algorithms": "RS256"},
    )  # fmt: skip
    try:
        assert fetch(strict, canned, 200, as_json(access_token=token("RS256"))).status_code == 200
        for alg in ("HS256", "ES256"):
            refused = fetch(strict, canned, 200, as_json(access_token=token(alg)))
            assert refused.status_code == 502 and alg in refused.json()["error_description"]
    finally:
        strict.stop()


PASSED = {
    "opaque access token": as_json(access_token="2YotnFZFEjr1zCsicMWpAA", token_type="Bearer"),
    "5-part JWE": as_json(access_token=b64(b'{"alg":"RSA-OAEP","enc":"A256GCM"}') + ".a.b.c.d"),
    "empty body": b"",
}


@pytest.mark.parametrize("body", PASSED.values(), ids=PASSED.keys())
def test_responses_without_a_jws_pass_unchanged(proxy: Proxy, canned: CannedServer, body: bytes) -> None:
    response = fetch(proxy, canned, 200, body)
    assert response.status_code == 200
    assert response.content == body


def test_an_unreadable_token_answer_is_refused(proxy: Proxy, canned: CannedServer) -> None:
    """A 2xx token answer the proxy cannot read is not passed on: a client may read more into it."""
    response = fetch(proxy, canned, 200, b"<html>maintenance</html>")
    assert response.status_code == 502
    assert response.json()["error"] == "server_error"


def test_id_token_passes_and_provider_headers_are_kept(proxy: Proxy, canned: CannedServer) -> None:
    id_token = token(aud="demo-client")
    body = as_json(access_token=token(), id_token=id_token, token_type="Bearer", expires_in=300)
    response = fetch(proxy, canned, 200, body, **{"X-Request-Id": "abc-123", "Set-Cookie": "s=1; HttpOnly"})
    assert response.status_code == 200
    fields = response.json()
    assert fields["id_token"] == id_token
    assert not JWS_RE.search(fields["access_token"])
    assert response.headers["X-Request-Id"] == "abc-123"
    assert response.headers["Set-Cookie"] == "s=1; HttpOnly"
    assert response.headers["Cache-Control"] == "no-store"


def test_provider_errors_pass_unchanged(proxy: Proxy, canned: CannedServer) -> None:
    body = as_json(error="invalid_client", error_description="bad secret")
    response = fetch(proxy, canned, 401, body, **{"WWW-Authenticate": 'Basic realm="x"'})
    assert response.status_code == 401 and response.content == body


def test_jwks_verification(canned: CannedServer, api: ManagedProcess, tmp_path: Path) -> None:
    """With splittoken_jwks_url, a token not signed by the provider's key is refused."""
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key()))
    jwks = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()
    assert api.url
    port = canned.server_address[1]
    verifying = start_proxy(
        f"http://127.0.0.1:{port}", api.url, store=str(tmp_path / "store"),
        options={"splittoken_jwks_url": f"http://127.0.0.1:{port}/certs"},
    )  # fmt: skip
    try:
        good = jwt.encode(
            {**CLAIMS, "exp": int(time.time()) + 300}, RSA_KEY, algorithm="RS256", headers={"kid": "k1"}
        )
        forged_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        forged = jwt.encode(
            {**CLAIMS, "exp": int(time.time()) + 300}, forged_key, algorithm="RS256", headers={"kid": "k1"}
        )
        canned.jwks = jwks
        assert fetch(verifying, canned, 200, as_json(access_token=good)).status_code == 200
        refused = fetch(verifying, canned, 200, as_json(access_token=forged))
        assert refused.status_code == 502 and "verification failed" in refused.json()["error_description"]
        assert_no_leak(refused)
    finally:
        verifying.stop()
