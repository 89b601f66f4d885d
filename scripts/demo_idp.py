#!/usr/bin/env python3
"""A Keycloak-like demo identity provider for splittoken's demos and end-to-end tests.

No mitmproxy on purpose (stdlib http.server via demo_http.py, pyjwt, cryptography): it stands in for the
authorization server behind the proxy. It serves Keycloak's paths, so splittoken's default filters match
it and a real Keycloak alike. This file is its HTTP side (routes, CORS, the command line); what it knows
and decides is in idp_core.py.

    python scripts/demo_idp.py [--host 127.0.0.1] [--port 0] [--realm demo] [--access-ttl 300]
        [--refresh-ttl 1800] [--refresh-delay 0.0] [--no-rotate] [--refuse-access-revoke] [--dpop-bind]
        [--verbose]

Port 0 picks a free port. Once listening it prints one line: ``demo-idp listening on http://HOST:PORT``.

Endpoints (P = /realms/<realm>/protocol/openid-connect; * = CORS for loopback web origins, preflight too):
  GET  P/auth           authorization code flow, PKCE S256 required: redirects to redirect_uri with code,
                        state, session_state and iss. The demo user (login_hint, else alice) approves at
                        once; no login page.
  POST P/token *        grants authorization_code (code_verifier), client_credentials, password,
                        refresh_token. Clients: demo-client / demo-secret (client_secret_basic or
                        client_secret_post); demo-spa, public (no secret), code flow only, redirect URIs
                        http://127.0.0.1:*/* and http://localhost:*/*.
  POST P/token/introspect  RFC 7662, for confidential clients: {"active": true, claims…} for a live access
                        or refresh token, {"active": false} for a revoked, expired, used or unknown one.
  POST P/revoke *       RFC 7009. --refuse-access-revoke answers 400 unsupported_token_type for an
                        access token, as oidc-provider does.
  GET  P/certs *        JWKS of the RS256 signing key.
  GET|POST P/userinfo * Authorization: Bearer <access token> -> the user's claims.
  GET  /realms/<realm>/.well-known/openid-configuration *
  GET  /_stats          {"token": {"authorization_code": n, "client_credentials": n, "password": n,
                         "refresh_token": n, "errors": n}, "revoke": n, "introspect": n,
                         "revoked_tokens": [jti, ...], "userinfo": n}
                        A grant counts every token request that reached the IdP, whatever its outcome;
                        "errors" counts token answers that were not 200.
  POST /_reset          zeroes the counters (revoked and used tokens stay dead).

Users: alice / alice-pw (alice@example.com, roles admin+user, tenant acme) and
       bob / bob-pw (bob@example.com, role user, tenant globex).

Refresh tokens are HS256 JWTs under a server secret, like Keycloak's. They rotate: one use each, unless
--no-rotate, which hands the same refresh token back. --refresh-delay S sleeps S seconds before answering
a refresh grant, so that tests can make concurrent refreshes overlap.

--dpop-bind: a token request whose DPoP header holds a proof that verifies (RFC 9449: typ dpop+jwt, an
asymmetric alg, signed by its public jwk, htm POST, htu's path the token endpoint's, iat within a minute)
gets an access token with cnf.jkt (the key's RFC 7638 thumbprint) and "token_type": "DPoP"; a public
client's refresh token is bound too, and refreshing it needs a proof of the same key. A proof that does not
verify is 400 invalid_dpop_proof. Without the flag a DPoP header is ignored, as many servers do.

Test knobs (form fields of a token request, any grant; for tests only):
  access_ttl=N    the access token of this answer lives N seconds (0: already expired)
  refresh_ttl=N   the refresh token of this answer lives N seconds
  pad=N           adds a claim "pad" of N characters to the access token (large-token tests)
  bind_jkt=T      with --dpop-bind and a valid proof, binds the answer to thumbprint T, not the proof's key
  delay_ms=N      a refresh grant sleeps N ms more before answering (a slow authorization server)
  refresh=1       client_credentials also returns a refresh token (Keycloak returns none by default)
A request with ``Accept: application/x-www-form-urlencoded`` gets the token answer form-encoded, as GitHub
answers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from demo_http import DemoServer, QuietHandler, read_body, serve
from idp_core import Idp, parse_form
from idp_model import Config, JSONDict, OAuthError

# RFC 6749 §5.1: token answers must not be cached; errors neither, to be safe. A redirect carries a code.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@dataclass
class Reply:
    status: int
    body: JSONDict | None  # None: an empty body
    headers: dict[str, str] = field(default_factory=dict)
    form: bool = False  # encode the body as application/x-www-form-urlencoded


@dataclass(frozen=True)
class Route:
    methods: dict[str, Callable[[bytes], Reply]]
    # Keycloak's web origins open the endpoints a browser app calls; not the authorization page (a
    # navigation, not a fetch) nor introspection (a back end's call).
    cors: bool = False


class Handler(QuietHandler):
    server: IdpServer

    @property
    def idp(self) -> Idp:
        return self.server.idp

    def do_GET(self) -> None:
        try:
            body = read_body(self)
        except ValueError as exc:
            self.close_connection = True  # the stream is out of sync: do not read another request
            self.send(Reply(400, {"error": "invalid_request", "error_description": str(exc)}))
            return
        self.send(self.route(body))

    do_POST = do_HEAD = do_OPTIONS = do_GET

    def route(self, body: bytes) -> Reply:
        path = urlsplit(self.path).path
        route = self.routes().get(path)
        if route is None:
            return Reply(404, {"error": "not_found", "error_description": f"no such path: {path}"})
        method = "GET" if self.command == "HEAD" else self.command
        if method == "OPTIONS" and route.cors:
            return Reply(200, None)  # a CORS preflight: end_headers adds what it asks for
        if method not in route.methods:
            return Reply(
                405,
                {"error": "method_not_allowed", "error_description": f"{method} {path}"},
                {"Allow": ", ".join(route.methods)},
            )
        try:
            return route.methods[method](body)
        except OAuthError as exc:
            return Reply(exc.status, exc.body(), exc.headers)

    def routes(self) -> dict[str, Route]:
        realm = f"/realms/{self.idp.config.realm}"
        oidc = self.idp.oidc_path
        return {
            f"{oidc}/auth": Route({"GET": self.authorize}),
            f"{oidc}/token": Route({"POST": self.token}, cors=True),
            f"{oidc}/token/introspect": Route({"POST": self.introspect}),
            f"{oidc}/revoke": Route({"POST": self.revoke}, cors=True),
            f"{oidc}/certs": Route({"GET": lambda _: Reply(200, {"keys": [self.idp.keys.jwk]})}, cors=True),
            f"{oidc}/userinfo": Route({"GET": self.userinfo, "POST": self.userinfo}, cors=True),
            f"{realm}/.well-known/openid-configuration": Route(
                {"GET": lambda _: Reply(200, self.idp.discovery(self.base_url()))}, cors=True
            ),
            "/_stats": Route({"GET": lambda _: Reply(200, self.idp.stats())}),
            "/_reset": Route({"POST": self.reset}),
        }

    def cors_methods(self) -> Sequence[str]:
        route = self.routes().get(urlsplit(self.path).path)
        return [*route.methods, "OPTIONS"] if route and route.cors else ()

    def base_url(self) -> str:
        # From the Host header, so that the URLs we hand out work behind a reverse proxy too.
        host, port = self.server.server_address[:2]
        return f"http://{self.headers.get('Host') or f'{host}:{port}'}"

    def issuer(self) -> str:
        return f"{self.base_url()}/realms/{self.idp.config.realm}"

    def authorize(self, _body: bytes) -> Reply:
        query = parse_form(urlsplit(self.path).query.encode())
        return Reply(302, None, NO_STORE | {"Location": self.idp.authorize(query, self.issuer())})

    def token(self, body: bytes) -> Reply:
        as_form = "application/x-www-form-urlencoded" in self.headers.get("Accept", "")
        authorization = self.headers.get("Authorization", "")
        try:
            answer = self.idp.token(body, authorization, self.issuer(), self.headers.get_all("DPoP") or [])
        except OAuthError as exc:
            return Reply(exc.status, exc.body(), NO_STORE | exc.headers, as_form)
        return Reply(200, answer, NO_STORE, as_form)

    def introspect(self, body: bytes) -> Reply:
        return Reply(200, self.idp.introspect(body, self.headers.get("Authorization", "")), NO_STORE)

    def revoke(self, body: bytes) -> Reply:
        self.idp.revoke(body, self.headers.get("Authorization", ""))
        return Reply(200, None)

    def userinfo(self, _body: bytes) -> Reply:
        return Reply(200, self.idp.userinfo(self.headers.get("Authorization", "")))

    def reset(self, _body: bytes) -> Reply:
        self.idp.reset()
        return Reply(200, self.idp.stats())

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
    parser.add_argument(
        "--dpop-bind",
        action="store_true",
        help="bind access tokens to the key of a valid DPoP proof on the token request (RFC 9449)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    return parser.parse_args(argv)


def config(args: argparse.Namespace) -> Config:
    return Config(
        realm=args.realm,
        access_ttl=args.access_ttl,
        refresh_ttl=args.refresh_ttl,
        refresh_delay=args.refresh_delay,
        rotate=not args.no_rotate,
        refuse_access_revoke=args.refuse_access_revoke,
        dpop_bind=args.dpop_bind,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = IdpServer((args.host, args.port), Idp(config(args)), args.verbose)
    return serve(server, "demo-idp", args.host)


if __name__ == "__main__":
    sys.exit(main())
