#!/usr/bin/env python3
"""A Keycloak-like demo identity provider for splittoken's demos and end-to-end tests.

No mitmproxy on purpose (stdlib http.server via demo_http.py, pyjwt, cryptography): it stands in for the
authorization server behind the proxy. It serves Keycloak's paths, so splittoken's default filters match
it and a real Keycloak alike.

    python scripts/demo_idp.py [--host 127.0.0.1] [--port 0] [--realm demo] [--access-ttl 300]
        [--refresh-ttl 1800] [--refresh-delay 0.0] [--no-rotate] [--refuse-access-revoke] [--verbose]

Port 0 picks a free port. Once listening it prints one line: ``demo-idp listening on http://HOST:PORT``.

Endpoints (P = /realms/<realm>/protocol/openid-connect):
  POST P/token          grants client_credentials, password, refresh_token. Client demo-client /
                        demo-secret, by client_secret_basic or client_secret_post.
  POST P/revoke         RFC 7009. --refuse-access-revoke answers 400 unsupported_token_type for an
                        access token, as oidc-provider does.
  GET  P/certs          JWKS of the RS256 signing key.
  GET|POST P/userinfo   Authorization: Bearer <access token> -> the user's claims.
  GET  /realms/<realm>/.well-known/openid-configuration
  GET  /_stats          {"token": {"client_credentials": n, "password": n, "refresh_token": n, "errors": n},
                         "revoke": n, "revoked_tokens": [jti, ...], "userinfo": n}
                        A grant counts every token request that reached the IdP, whatever its outcome;
                        "errors" counts token answers that were not 200.
  POST /_reset          zeroes the counters (revoked and used tokens stay dead).

Users: alice / alice-pw (alice@example.com, roles admin+user, tenant acme) and
       bob / bob-pw (bob@example.com, role user, tenant globex).

Refresh tokens are HS256 JWTs under a server secret, like Keycloak's. They rotate: one use each, unless
--no-rotate, which hands the same refresh token back. --refresh-delay S sleeps S seconds before answering
a refresh grant, so that tests can make concurrent refreshes overlap.

Test knobs (form fields of a token request, any grant; for tests only):
  access_ttl=N    the access token of this answer lives N seconds (0: already expired)
  refresh_ttl=N   the refresh token of this answer lives N seconds
  pad=N           adds a claim "pad" of N characters to the access token (large-token tests)
  refresh=1       client_credentials also returns a refresh token (Keycloak returns none by default)
A request with ``Accept: application/x-www-form-urlencoded`` gets the token answer form-encoded, as GitHub
answers.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from demo_http import MAX_BODY, DemoServer, QuietHandler, read_body, serve

CLIENTS = {"demo-client": "demo-secret"}
USERS: dict[str, dict[str, Any]] = {
    "alice": {
        "password": "alice-pw",
        "email": "alice@example.com",
        "roles": ["admin", "user"],
        "tenant": "acme",
    },
    "bob": {"password": "bob-pw", "email": "bob@example.com", "roles": ["user"], "tenant": "globex"},
}
# Keycloak subjects are UUIDs; derive stable ones so a user's sub survives a restart.
SUBJECTS = {str(uuid.uuid5(uuid.NAMESPACE_URL, f"demo-idp:{name}")): name for name in USERS}
GRANTS = ("client_credentials", "password", "refresh_token")
DEFAULT_SCOPES = ["profile", "email"]
JSONDict = dict[str, Any]


class OAuthError(Exception):
    """An RFC 6749 §5.2 error answer."""

    def __init__(self, status: int, error: str, description: str, headers: dict[str, str] | None = None):
        super().__init__(description)
        self.status, self.error, self.description = status, error, description
        self.headers = headers or {}

    def body(self) -> JSONDict:
        return {"error": self.error, "error_description": self.description}


@dataclass
class Reply:
    status: int
    body: JSONDict | None  # None: an empty body
    headers: dict[str, str] = field(default_factory=dict)
    form: bool = False  # encode the body as application/x-www-form-urlencoded


@dataclass
class Session:
    """Who a set of tokens is for; a refresh carries it over to the new tokens."""

    client_id: str
    sub: str
    scope: str
    sid: str


def jwk_thumbprint(jwk: JSONDict) -> str:
    # RFC 7638 thumbprint as the kid: stable for a key, and what many IdPs use.
    canon = json.dumps({k: jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canon.encode()).digest()).rstrip(b"=").decode()


def user_claims(sub: str) -> JSONDict:
    name = SUBJECTS.get(sub)
    if name is None:  # a service account
        return {"preferred_username": sub}
    user = USERS[name]
    return {
        "email": user["email"],
        "email_verified": True,
        "preferred_username": name,
        "realm_access": {"roles": list(user["roles"])},
        "tenant": user["tenant"],
    }


def grant_scope(requested: str) -> str:
    # Keycloak adds the client's default scopes to whatever was asked for.
    return " ".join(dict.fromkeys(requested.split() + DEFAULT_SCOPES))


def int_field(form: dict[str, str], name: str, default: int, limit: int) -> int:
    raw = form.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) > limit:
        raise OAuthError(400, "invalid_request", f"{name} must be an integer in 0..{limit}")
    return int(raw)


def parse_form(body: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError) as exc:
        raise OAuthError(400, "invalid_request", "malformed form body") from exc
    form = dict(pairs)
    if len(form) != len(pairs):  # RFC 6749 §3.2: parameters must not be repeated
        raise OAuthError(400, "invalid_request", "repeated parameter")
    return form


class Idp:
    """Keys, issued-token state and counters; the HTTP handler only translates requests."""

    def __init__(self, args: argparse.Namespace):
        self.realm: str = args.realm
        self.access_ttl: int = args.access_ttl
        self.refresh_ttl: int = args.refresh_ttl
        self.refresh_delay: float = args.refresh_delay
        self.rotate: bool = not args.no_rotate
        self.refuse_access_revoke: bool = args.refuse_access_revoke
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.jwk: JSONDict = dict(RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True))
        self.kid = jwk_thumbprint(self.jwk)
        self.jwk.pop("key_ops", None)  # RFC 7517 §4.3: not together with "use", which Keycloak sends
        self.jwk.update(kid=self.kid, use="sig", alg="RS256")
        self.refresh_secret = secrets.token_bytes(32)
        self.lock = threading.Lock()
        self.used_refresh: set[str] = set()
        self.revoked: set[str] = set()  # every jti revoked; unlike the stats, /_reset keeps it
        self.reset()

    # --- counters -------------------------------------------------------------------------------
    def reset(self) -> None:
        with self.lock:
            self.counts: JSONDict = {
                "token": dict.fromkeys([*GRANTS, "errors"], 0),
                "revoke": 0,
                "userinfo": 0,
            }
            self.revoked_listed: list[str] = []

    def count(self, *keys: str) -> None:
        with self.lock:
            if len(keys) == 2:
                self.counts[keys[0]][keys[1]] += 1
            else:
                self.counts[keys[0]] += 1

    def stats(self) -> JSONDict:
        with self.lock:
            return {
                "token": dict(self.counts["token"]),
                "revoke": self.counts["revoke"],
                "revoked_tokens": list(self.revoked_listed),
                "userinfo": self.counts["userinfo"],
            }

    def mark_revoked(self, jti: str) -> None:
        with self.lock:
            if jti not in self.revoked:
                self.revoked.add(jti)
                self.revoked_listed.append(jti)

    # --- client authentication ------------------------------------------------------------------
    def authenticate_client(self, form: dict[str, str], authorization: str) -> str:
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        if authorization[:6].lower() == "basic ":
            try:
                raw = base64.b64decode(authorization[6:].strip(), validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                raw = ""
            basic_id, _, basic_secret = raw.partition(":")
            # RFC 6749 §2.3.1: both parts are form-urlencoded before the Basic encoding.
            basic_id, secret = unquote_plus(basic_id), unquote_plus(basic_secret)
            client_id = basic_id if client_id in ("", basic_id) else ""  # two identities: trust neither
        expected = CLIENTS.get(client_id)
        if expected is None or not hmac.compare_digest(expected.encode(), secret.encode()):
            raise OAuthError(
                401,
                "invalid_client",
                "Invalid client or Invalid client credentials",
                {"WWW-Authenticate": f'Basic realm="{self.realm}"'},
            )
        return client_id

    # --- token endpoint -------------------------------------------------------------------------
    def token(self, body: bytes, authorization: str, issuer: str) -> JSONDict:
        try:
            form = parse_form(body)
            grant = form.get("grant_type", "")
            if grant in GRANTS:
                self.count("token", grant)
            client_id = self.authenticate_client(form, authorization)
            if grant == "client_credentials":
                scope = grant_scope(form.get("scope", ""))
                session = Session(client_id, f"service-account-{client_id}", scope, uuid.uuid4().hex)
                return self.issue(session, form, issuer, with_refresh=form.get("refresh") == "1")
            if grant == "password":
                return self.issue(self.password_session(form, client_id), form, issuer, with_refresh=True)
            if grant == "refresh_token":
                return self.refresh(form, client_id, issuer)
            if not grant:
                raise OAuthError(400, "invalid_request", "Missing form parameter: grant_type")
            raise OAuthError(400, "unsupported_grant_type", f"Unsupported grant_type {grant!r}")
        except OAuthError:
            self.count("token", "errors")
            raise

    def password_session(self, form: dict[str, str], client_id: str) -> Session:
        username, password = form.get("username", ""), form.get("password", "")
        user = USERS.get(username)
        if user is None or not hmac.compare_digest(user["password"].encode(), password.encode()):
            raise OAuthError(400, "invalid_grant", "Invalid user credentials")
        sub = next(s for s, name in SUBJECTS.items() if name == username)
        return Session(client_id, sub, grant_scope(form.get("scope", "")), uuid.uuid4().hex)

    def refresh(self, form: dict[str, str], client_id: str, issuer: str) -> JSONDict:
        token = form.get("refresh_token")
        if not token:
            raise OAuthError(400, "invalid_request", "Missing parameter: refresh_token")
        time.sleep(self.refresh_delay)  # before the check, so that concurrent refreshes really overlap
        claims = self.check_refresh(token, client_id)
        session = Session(client_id, claims["sub"], claims["scope"], claims["sid"])
        if self.rotate:
            return self.issue(session, form, issuer, with_refresh=True)
        return self.issue(session, form, issuer, with_refresh=False) | {
            "refresh_token": token,
            "refresh_expires_in": max(0, claims["exp"] - int(time.time())),
        }

    def check_refresh(self, token: str, client_id: str) -> JSONDict:
        try:
            # aud is the issuer URL, which depends on the Host the client used: not worth checking here.
            claims = jwt.decode(
                token,
                self.refresh_secret,
                algorithms=["HS256"],
                options={"verify_aud": False, "require": ["exp", "jti", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise OAuthError(400, "invalid_grant", "Token is not active") from exc
        except jwt.InvalidTokenError as exc:
            raise OAuthError(400, "invalid_grant", "Invalid refresh token") from exc
        if claims.get("typ") != "Refresh" or claims.get("azp") != client_id:
            raise OAuthError(400, "invalid_grant", "Invalid refresh token")
        with self.lock:  # check-and-consume in one step: of two concurrent refreshes, one wins
            if claims["jti"] in self.revoked:
                raise OAuthError(400, "invalid_grant", "Session not active")
            if claims["jti"] in self.used_refresh:
                raise OAuthError(400, "invalid_grant", "Maximum allowed refresh token reuse exceeded")
            if self.rotate:
                self.used_refresh.add(claims["jti"])
        return claims

    def issue(self, session: Session, form: dict[str, str], issuer: str, with_refresh: bool) -> JSONDict:
        access_ttl = int_field(form, "access_ttl", self.access_ttl, 10**9)
        refresh_ttl = int_field(form, "refresh_ttl", self.refresh_ttl, 10**9)
        pad = int_field(form, "pad", 0, MAX_BODY)
        now = int(time.time())
        common = {"iss": issuer, "sub": session.sub, "azp": session.client_id, "iat": now, "sid": session.sid}
        access = (
            common
            | {
                "aud": "account",
                "typ": "Bearer",
                "exp": now + access_ttl,
                "jti": str(uuid.uuid4()),
                "scope": session.scope,
            }
            | user_claims(session.sub)
        )
        if pad:
            access["pad"] = "x" * pad
        answer: JSONDict = {
            "access_token": self.sign(access),
            "expires_in": access_ttl,
            "refresh_expires_in": 0,
            "token_type": "Bearer",
            "not-before-policy": 0,
            "session_state": session.sid,
            "scope": session.scope,
        }
        if with_refresh:
            refresh = common | {
                "aud": issuer,
                "typ": "Refresh",
                "exp": now + refresh_ttl,
                "jti": str(uuid.uuid4()),
                "scope": session.scope,
            }
            answer["refresh_token"] = jwt.encode(refresh, self.refresh_secret, algorithm="HS256")
            answer["refresh_expires_in"] = refresh_ttl
        if "openid" in session.scope.split():
            claims = user_claims(session.sub)
            profile = {k: claims[k] for k in ("email", "preferred_username") if k in claims}
            id_token = common | {"aud": session.client_id, "typ": "ID", "exp": now + access_ttl} | profile
            answer["id_token"] = self.sign(id_token | {"jti": str(uuid.uuid4())})
        return answer

    def sign(self, claims: JSONDict) -> str:
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid, "typ": "JWT"})

    # --- revocation, userinfo, discovery --------------------------------------------------------
    def revoke(self, body: bytes, authorization: str) -> None:
        self.count("revoke")
        form = parse_form(body)
        self.authenticate_client(form, authorization)
        token = form.get("token")
        if not token:
            raise OAuthError(400, "invalid_request", "Missing token parameter")
        try:
            options = {"verify_exp": False, "verify_aud": False}
            claims = jwt.decode(token, self.refresh_secret, algorithms=["HS256"], options=options)
        except jwt.InvalidTokenError:
            claims = self.access_claims(token, verify_exp=False)
            if claims and self.refuse_access_revoke:
                raise OAuthError(400, "unsupported_token_type", "Access tokens cannot be revoked") from None
        if claims and isinstance(claims.get("jti"), str):
            self.mark_revoked(claims["jti"])
        # RFC 7009 §2.2: an invalid or unknown token gets 200 as well.

    def access_claims(self, token: str, verify_exp: bool = True) -> JSONDict | None:
        """The claims of an access token this IdP signed, or None."""
        try:
            claims = jwt.decode(
                token,
                self.key.public_key(),
                algorithms=["RS256"],
                audience="account",
                options={"verify_exp": verify_exp, "require": ["exp", "jti", "sub"]},
            )
        except jwt.InvalidTokenError:
            return None
        return claims if claims.get("typ") == "Bearer" else None  # an id_token is not an access token

    def userinfo(self, authorization: str) -> JSONDict:
        self.count("userinfo")
        scheme, _, token = authorization.partition(" ")
        claims = self.access_claims(token.strip()) if scheme.lower() == "bearer" else None
        if claims is not None and claims["jti"] in self.revoked:
            claims = None
        if claims is None:
            description = "Token verification failed" if authorization else "Missing bearer token"
            raise OAuthError(
                401,
                "invalid_token",
                description,
                {
                    "WWW-Authenticate": f'Bearer realm="{self.realm}", error="invalid_token", '
                    f'error_description="{description}"'
                },
            )
        return {"sub": claims["sub"]} | user_claims(claims["sub"])

    def discovery(self, base: str) -> JSONDict:
        issuer = f"{base}/realms/{self.realm}"
        oidc = f"{issuer}/protocol/openid-connect"
        auth_methods = ["client_secret_basic", "client_secret_post"]
        return {
            "issuer": issuer,
            "token_endpoint": f"{oidc}/token",
            "revocation_endpoint": f"{oidc}/revoke",
            "jwks_uri": f"{oidc}/certs",
            "userinfo_endpoint": f"{oidc}/userinfo",
            "grant_types_supported": ["client_credentials", "password", "refresh_token"],
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", *DEFAULT_SCOPES, "offline_access"],
            "token_endpoint_auth_methods_supported": auth_methods,
            "revocation_endpoint_auth_methods_supported": auth_methods,
            "claims_supported": ["sub", "iss", "email", "email_verified", "preferred_username", "tenant"],
        }


class Handler(QuietHandler):
    server: IdpServer

    def do_GET(self) -> None:
        try:
            body = read_body(self)
        except ValueError as exc:
            self.close_connection = True  # the stream is out of sync: do not read another request
            self.send(Reply(400, {"error": "invalid_request", "error_description": str(exc)}))
            return
        self.send(self.route(body))

    do_POST = do_HEAD = do_GET

    def route(self, body: bytes) -> Reply:
        routes = self.routes()
        path = urlsplit(self.path).path
        if path not in routes:
            return Reply(404, {"error": "not_found", "error_description": f"no such path: {path}"})
        methods = routes[path]
        method = "GET" if self.command == "HEAD" else self.command
        if method not in methods:
            return Reply(
                405,
                {"error": "method_not_allowed", "error_description": f"{method} {path}"},
                {"Allow": ", ".join(methods)},
            )
        try:
            return methods[method](body)
        except OAuthError as exc:
            return Reply(exc.status, exc.body(), exc.headers)

    def routes(self) -> dict[str, dict[str, Callable[[bytes], Reply]]]:
        realm = f"/realms/{self.server.idp.realm}"
        oidc = f"{realm}/protocol/openid-connect"
        return {
            f"{oidc}/token": {"POST": self.token},
            f"{oidc}/revoke": {"POST": self.revoke},
            f"{oidc}/certs": {"GET": lambda _: Reply(200, {"keys": [self.server.idp.jwk]})},
            f"{oidc}/userinfo": {"GET": self.userinfo, "POST": self.userinfo},
            f"{realm}/.well-known/openid-configuration": {"GET": lambda _: Reply(200, self.discovery())},
            "/_stats": {"GET": lambda _: Reply(200, self.server.idp.stats())},
            "/_reset": {"POST": self.reset},
        }

    def base_url(self) -> str:
        # From the Host header, so that the URLs we hand out work behind a reverse proxy too.
        host, port = self.server.server_address[:2]
        return f"http://{self.headers.get('Host') or f'{host}:{port}'}"

    def discovery(self) -> JSONDict:
        return self.server.idp.discovery(self.base_url())

    def token(self, body: bytes) -> Reply:
        # RFC 6749 §5.1: token answers must not be cached; errors neither, to be safe.
        headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        as_form = "application/x-www-form-urlencoded" in self.headers.get("Accept", "")
        issuer = f"{self.base_url()}/realms/{self.server.idp.realm}"
        try:
            answer = self.server.idp.token(body, self.headers.get("Authorization", ""), issuer)
        except OAuthError as exc:
            return Reply(exc.status, exc.body(), headers | exc.headers, as_form)
        return Reply(200, answer, headers, as_form)

    def revoke(self, body: bytes) -> Reply:
        self.server.idp.revoke(body, self.headers.get("Authorization", ""))
        return Reply(200, None)

    def userinfo(self, _body: bytes) -> Reply:
        return Reply(200, self.server.idp.userinfo(self.headers.get("Authorization", "")))

    def reset(self, _body: bytes) -> Reply:
        self.server.idp.reset()
        return Reply(200, self.server.idp.stats())

    def send(self, reply: Reply) -> None:
        if reply.body is None:
            payload, content_type = b"", None
        elif reply.form:
            payload, content_type = urlencode(reply.body).encode(), "application/x-www-form-urlencoded"
        else:
            payload, content_type = json.dumps(reply.body).encode(), "application/json"
        self.send_response(reply.status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


class IdpServer(DemoServer):
    def __init__(self, address: tuple[str, int], idp: Idp, verbose: bool):
        super().__init__(address, Handler, verbose)
        self.idp = idp


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--realm", default="demo")
    parser.add_argument("--access-ttl", type=int, default=300, help="access token lifetime, seconds")
    parser.add_argument("--refresh-ttl", type=int, default=1800, help="refresh token lifetime, seconds")
    parser.add_argument("--refresh-delay", type=float, default=0.0, help="sleep before answering a refresh")
    parser.add_argument("--no-rotate", action="store_true", help="refreshes hand the same refresh token back")
    parser.add_argument(
        "--refuse-access-revoke",
        action="store_true",
        help="answer 400 unsupported_token_type when asked to revoke an access token",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = IdpServer((args.host, args.port), Idp(args), args.verbose)
    return serve(server, "demo-idp", args.host)


if __name__ == "__main__":
    sys.exit(main())
