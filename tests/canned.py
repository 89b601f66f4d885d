"""A scriptable authorization server and API behind one origin, for end-to-end tests that attack the proxy.

It routes as lenient servers do (Spring, Tomcat, nginx with merge_slashes, IIS): a request target is read
without its fragment, query and ``;parameters``, percent-decoded, with dot segments removed, slashes merged,
no trailing slash and case folded. So ``POST /realms/demo/protocol/openid-connect/tok%65n/`` is its token
endpoint, as it would be for such a server. Paths under ``/api/`` are its API, which echoes each request as
JSON: a gateway routing IdP and API by path.

    with canned_server() as server:
        server.url                       # http://127.0.0.1:PORT
        server.script.append(answer)     # the next request, whatever its path, gets answer(request)
        server.received[-1]              # what the last request looked like when it arrived

Without a script, the token endpoint implements the password, client_credentials and refresh_token grants:
access tokens are RS256 JWTs carrying SECRET_CLAIMS, refresh tokens (opaque, or HS256 JWTs for a login form
with ``refresh_kind=jws``) are bound to the client authentication that obtained them and rotate on every use,
and a refresh form field ``delay=S`` makes the answer wait S seconds after the refresh token was consumed.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import http.server
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
REFRESH_KEY = secrets.token_bytes(32)
# What the access token says about its subject: none of it may ever be readable by the client. The id_token
# carries none of it, so that the one JWS a client may hold gives none of these away either.
SECRET_CLAIMS = {"email": "victim@example.com", "tenant": "secret-tenant"}
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def lenient_path(target: str) -> str:
    """The path a lenient server routes a request target to (see the module docstring)."""
    path = target.split("#", 1)[0].split("?", 1)[0]
    segments: list[str] = []
    for raw in path.split("/"):
        segment = urllib.parse.unquote(raw.split(";", 1)[0]).lower()
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in ("", "."):
            segments.append(segment)
    return "/" + "/".join(segments)


@dataclass(frozen=True)
class Received:
    """A request as it reached the server."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers if k.lower() == name.lower()), "")

    def form(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.body.decode("utf-8", "replace"), keep_blank_values=True))

    def client(self) -> str:
        """Who the client authenticated as: a digest of its Basic credentials, client_secret or
        client_assertion, whichever it sent."""
        form = self.form()
        basic = self.header("authorization")
        if basic.lower().startswith("basic "):
            presented = basic
        elif "client_assertion" in form:
            presented = f"{form.get('client_id', '')}|assertion|{form['client_assertion']}"
        else:
            presented = f"{form.get('client_id', '')}|secret|{form.get('client_secret', '')}"
        return hashlib.sha256(presented.encode()).hexdigest()


Answer = tuple[int, dict[str, str], bytes]  # status, headers, body
Script = Callable[[Received], Answer]


@dataclass
class _Refresh:
    client: str
    used: bool = False
    revoked: bool = False


def json_answer(status: int, body: object, **headers: str) -> Answer:
    return status, headers, json.dumps(body).encode()


class CannedServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.script: collections.deque[Script] = collections.deque()
        self.received: list[Received] = []
        self.issued_refresh: dict[str, _Refresh] = {}
        self.revoked: list[str] = []
        self.lock = threading.Lock()

    def arrived(self, predicate: Callable[[Received], bool]) -> list[Received]:
        with self.lock:
            return [r for r in self.received if predicate(r)]

    # --- the endpoints ----------------------------------------------------------------------------
    def route(self, request: Received) -> Answer:
        with self.lock:
            script = self.script.popleft() if self.script else None
        if script:
            return script(request)
        path = lenient_path(request.target)
        if path.startswith("/api/"):
            return json_answer(200, {
                "method": request.method, "target": request.target, "headers": list(request.headers),
                "body": request.body.decode("utf-8", "replace"),
            })  # fmt: skip
        if request.method == "GET" and path.endswith("/certs"):
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True)
            return json_answer(200, {"keys": [jwk | {"kid": "k1", "use": "sig", "alg": "RS256"}]})
        if request.method == "POST" and path.endswith("/token"):
            return self.token(request)
        if request.method == "POST" and path.endswith("/revoke"):
            return self.revoke(request)
        return json_answer(404, {"error": "not_found"})

    def token(self, request: Received) -> Answer:
        form = request.form()
        grant = form.get("grant_type")
        if grant in ("password", "client_credentials"):
            return json_answer(200, self.issue(request.client(), form.get("refresh_kind", "opaque")))
        if grant != "refresh_token":
            return json_answer(400, {"error": "unsupported_grant_type"})
        token = form.get("refresh_token", "")
        with self.lock:
            state = self.issued_refresh.get(token)
            if state is None or state.used or state.revoked:
                return json_answer(
                    400, {"error": "invalid_grant", "error_description": "refresh token unknown"}
                )
            if state.client != request.client():
                return json_answer(401, {"error": "invalid_client"})
            state.used = True
        time.sleep(float(form.get("delay", 0)))
        kind = "jws" if token.count(".") == 2 else "opaque"
        return json_answer(200, self.issue(request.client(), kind))

    def revoke(self, request: Received) -> Answer:
        token = request.form().get("token", "")
        with self.lock:
            self.revoked.append(token)
            if state := self.issued_refresh.get(token):
                state.revoked = True
        return 200, {}, b""

    def issue(self, client: str, refresh_kind: str) -> dict[str, object]:
        now = int(time.time())
        access = sign({"sub": "victim", "jti": secrets.token_hex(8), "exp": now + 300, **SECRET_CLAIMS})
        id_token = sign({"sub": "victim", "aud": "canned-client", "exp": now + 300})
        refresh = self.mint_refresh(client, refresh_kind)
        return {
            "access_token": access, "token_type": "Bearer", "expires_in": 300,
            "refresh_token": refresh, "id_token": id_token,
        }  # fmt: skip

    def mint_refresh(self, client: str, kind: str = "opaque") -> str:
        """A new refresh token bound to ``client``: opaque, or an HS256 JWT as Keycloak issues them."""
        if kind == "jws":
            claims = {"typ": "Refresh", "jti": secrets.token_hex(8), "exp": int(time.time()) + 1800}
            token = jwt.encode(claims | SECRET_CLAIMS, REFRESH_KEY, algorithm="HS256")
        else:
            token = "rt-" + secrets.token_urlsafe(24)
        with self.lock:
            self.issued_refresh[token] = _Refresh(client)
        return token


def sign(claims: dict[str, object]) -> str:
    return jwt.encode(claims, RSA_KEY, algorithm="RS256", headers={"kid": "k1"})


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # or keep-alive requests wait ~40 ms each for delayed ACKs
    server: CannedServer

    def handle_any(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        request = Received(self.command, self.path, tuple(self.headers.items()), body)
        with self.server.lock:
            self.server.received.append(request)
        status, headers, payload = self.server.route(request)
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = handle_any

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def canned_server() -> Iterator[CannedServer]:
    server = CannedServer()
    thread = threading.Thread(target=server.serve_forever, name="canned-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
