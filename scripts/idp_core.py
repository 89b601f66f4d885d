"""What the demo identity provider decides: logins, grants, DPoP binding, revocation and introspection, from
what it knows (idp_model.py) and with its keys (idp_crypto.py). No HTTP here: scripts/demo_idp.py turns
requests into these calls and what they return (or raise) into answers.

It behaves as Keycloak does where the proxy can tell (paths, claims, error codes), so that splittoken's
defaults work against it and against a real Keycloak alike.
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit

import jwt

from demo_http import MAX_BODY
from idp_crypto import DPOP_ALGORITHMS, Keys, dpop_thumbprint, invalid_dpop, pkce_challenge
from idp_model import (
    CLIENTS,
    DEFAULT_SCOPES,
    DEMO_USER,
    GRANTS,
    SUBJECT_OF,
    USERS,
    Client,
    CodeGrant,
    Config,
    JSONDict,
    OAuthError,
    Session,
    TokenRequest,
    grant_scope,
    user_claims,
)

CODE_TTL = 60  # seconds an authorization code may wait for its exchange (Keycloak: 60)
# RFC 7636 §4.1: 43 to 128 unreserved characters.
CODE_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")


# --- request parameters ---------------------------------------------------------------------------------


def parse_form(body: bytes) -> dict[str, str]:
    """An application/x-www-form-urlencoded body, or a query string, as OAuth reads one."""
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError) as exc:
        raise OAuthError(400, "invalid_request", "malformed form body") from exc
    form = dict(pairs)
    if len(form) != len(pairs):  # RFC 6749 §3.1, §3.2: parameters must not be repeated
        raise OAuthError(400, "invalid_request", "repeated parameter")
    return form


def int_field(form: dict[str, str], name: str, default: int, limit: int) -> int:
    raw = form.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) > limit:
        raise OAuthError(400, "invalid_request", f"{name} must be an integer in 0..{limit}")
    return int(raw)


def with_query(uri: str, params: dict[str, str]) -> str:
    """The redirect URI with the answer's parameters added to its own query (RFC 6749 §3.1.2)."""
    parts = urlsplit(uri)
    query = "&".join(filter(None, [parts.query, urlencode(params)]))
    return parts._replace(query=query).geturl()


# --- the identity provider ------------------------------------------------------------------------------


@dataclass
class Counters:
    """What reached the identity provider, for tests; /_reset zeroes it."""

    token: dict[str, int] = field(default_factory=lambda: dict.fromkeys([*GRANTS, "errors"], 0))
    revoke: int = 0
    introspect: int = 0
    userinfo: int = 0
    revoked_listed: list[str] = field(default_factory=list)


class Idp:
    """Issued-token state and counters, behind one lock: the HTTP handler runs one thread per connection."""

    def __init__(self, config: Config):
        self.config = config
        self.keys = Keys()
        self.lock = threading.Lock()
        self.codes: dict[str, CodeGrant] = {}
        self.used_refresh: set[str] = set()
        self.revoked: set[str] = set()  # every jti revoked; unlike the counters, /_reset keeps it
        self.counters = Counters()
        self.grants: dict[str, Callable[[TokenRequest], JSONDict]] = {
            "authorization_code": self.exchange_code,
            "client_credentials": self.client_credentials,
            "password": self.password,
            "refresh_token": self.refresh,
        }

    @property
    def oidc_path(self) -> str:
        return f"/realms/{self.config.realm}/protocol/openid-connect"

    # --- counters -------------------------------------------------------------------------------
    def reset(self) -> None:
        with self.lock:
            self.counters = Counters()

    def count(self, name: str, grant: str | None = None) -> None:
        with self.lock:
            if grant is None:
                setattr(self.counters, name, getattr(self.counters, name) + 1)
            else:
                self.counters.token[grant] += 1

    def stats(self) -> JSONDict:
        with self.lock:
            c = self.counters
            return {
                "token": dict(c.token),
                "revoke": c.revoke,
                "introspect": c.introspect,
                "revoked_tokens": list(c.revoked_listed),
                "userinfo": c.userinfo,
            }

    def mark_revoked(self, jti: str) -> None:
        with self.lock:
            if jti not in self.revoked:
                self.revoked.add(jti)
                self.counters.revoked_listed.append(jti)

    # --- client authentication ------------------------------------------------------------------
    def authenticate_client(self, form: dict[str, str], authorization: str) -> Client:
        """client_secret_basic or client_secret_post; a public client names itself and has no secret."""
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
        client = CLIENTS.get(client_id)
        expected = "" if client is None else client.secret or ""
        if client is None or not hmac.compare_digest(expected.encode(), secret.encode()):
            raise self.invalid_client("Invalid client or Invalid client credentials")
        return client

    def invalid_client(self, description: str) -> OAuthError:
        challenge = f'Basic realm="{self.config.realm}"'
        return OAuthError(401, "invalid_client", description, {"WWW-Authenticate": challenge})

    # --- authorization endpoint -----------------------------------------------------------------
    def authorize(self, query: dict[str, str], issuer: str) -> str:
        """Where the browser goes next: the client's redirect URI with a code, or with an error (RFC 6749
        §4.1.2). It is a demo: the user (login_hint, else alice) approves at once, no login page."""
        client = CLIENTS.get(query.get("client_id", ""))
        redirect_uri = query.get("redirect_uri", "")
        if client is None or not client.allows_redirect(redirect_uri):
            # §4.1.2.1: an unverified redirect URI is never followed; the user is told instead.
            raise OAuthError(400, "invalid_request", "Invalid client or invalid redirect_uri")
        state = {"state": query["state"]} if "state" in query else {}
        try:
            code, sid = self.issue_code(client, redirect_uri, query)
        except OAuthError as exc:
            return with_query(redirect_uri, exc.body() | state)
        return with_query(redirect_uri, {"code": code} | state | {"session_state": sid, "iss": issuer})

    def issue_code(self, client: Client, redirect_uri: str, query: dict[str, str]) -> tuple[str, str]:
        if query.get("response_type") != "code":
            raise OAuthError(400, "unsupported_response_type", "Only response_type=code is supported")
        # PKCE with S256 is required of every client here (OAuth 2.1; Keycloak's "PKCE method: S256").
        if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            raise OAuthError(400, "invalid_request", "Missing or invalid parameter: code_challenge_method")
        username = query.get("login_hint") or DEMO_USER
        if username not in USERS:
            raise OAuthError(400, "access_denied", "No such user")
        scope = grant_scope(query.get("scope", ""))
        session = Session(client.client_id, SUBJECT_OF[username], scope, uuid.uuid4().hex)
        now = time.time()
        grant = CodeGrant(session, redirect_uri, query["code_challenge"], query.get("nonce"), now + CODE_TTL)
        code = secrets.token_urlsafe(32)
        with self.lock:
            self.codes = {c: g for c, g in self.codes.items() if g.expires > now}  # unexchanged ones go
            self.codes[code] = grant
        return code, session.sid

    # --- token endpoint -------------------------------------------------------------------------
    def token(self, body: bytes, authorization: str, issuer: str, dpop: Sequence[str] = ()) -> JSONDict:
        try:
            form = parse_form(body)
            grant = form.get("grant_type", "")
            if grant in GRANTS:
                self.count("token", grant)
            client = self.authenticate_client(form, authorization)
            if not grant:
                raise OAuthError(400, "invalid_request", "Missing form parameter: grant_type")
            if grant not in client.grants:
                raise OAuthError(400, "unsupported_grant_type", f"Unsupported grant_type {grant!r}")
            jkt = None
            if self.config.dpop_bind and dpop:  # without --dpop-bind a DPoP header is ignored
                jkt = dpop_thumbprint(dpop, "POST", f"{self.oidc_path}/token", time.time())
                jkt = form.get("bind_jkt", jkt)  # test knob: a server that binds to another key
            return self.grants[grant](TokenRequest(form, client, issuer, jkt))
        except OAuthError:
            self.count("token", "errors")
            raise

    def client_credentials(self, request: TokenRequest) -> JSONDict:
        client_id = request.client.client_id
        scope = grant_scope(request.form.get("scope", ""))
        session = Session(client_id, f"service-account-{client_id}", scope, uuid.uuid4().hex)
        return self.issue(session, request, with_refresh=request.form.get("refresh") == "1")

    def password(self, request: TokenRequest) -> JSONDict:
        username, password = request.form.get("username", ""), request.form.get("password", "")
        user = USERS.get(username)
        if user is None or not hmac.compare_digest(user["password"].encode(), password.encode()):
            raise OAuthError(400, "invalid_grant", "Invalid user credentials")
        scope = grant_scope(request.form.get("scope", ""))
        session = Session(request.client.client_id, SUBJECT_OF[username], scope, uuid.uuid4().hex)
        return self.issue(session, request, with_refresh=True)

    def exchange_code(self, request: TokenRequest) -> JSONDict:
        with self.lock:  # one use: of two concurrent exchanges, one wins
            grant = self.codes.pop(request.form.get("code", ""), None)
        client_id = request.client.client_id
        if grant is None or grant.expires < time.time() or grant.session.client_id != client_id:
            raise OAuthError(400, "invalid_grant", "Code not valid")
        if request.form.get("redirect_uri") != grant.redirect_uri:
            raise OAuthError(400, "invalid_grant", "Incorrect redirect_uri")
        verifier = request.form.get("code_verifier", "")
        if not CODE_VERIFIER.fullmatch(verifier) or not hmac.compare_digest(
            pkce_challenge(verifier), grant.code_challenge
        ):
            raise OAuthError(400, "invalid_grant", "PKCE verification failed: Invalid code verifier")
        session = replace(grant.session, jkt=request.jkt if request.client.public else None)
        return self.issue(session, request, with_refresh=True, nonce=grant.nonce)

    def refresh(self, request: TokenRequest) -> JSONDict:
        token = request.form.get("refresh_token")
        if not token:
            raise OAuthError(400, "invalid_request", "Missing parameter: refresh_token")
        # Before the check, so that concurrent refreshes really overlap.
        time.sleep(self.config.refresh_delay + int_field(request.form, "delay_ms", 0, 60_000) / 1000)
        claims = self.check_refresh(token, request)
        jkt = claims.get("cnf", {}).get("jkt")
        session = Session(request.client.client_id, claims["sub"], claims["scope"], claims["sid"], jkt)
        if self.config.rotate:
            return self.issue(session, request, with_refresh=True)
        return self.issue(session, request, with_refresh=False) | {
            "refresh_token": token,
            "refresh_expires_in": max(0, claims["exp"] - int(time.time())),
        }

    def check_refresh(self, token: str, request: TokenRequest) -> JSONDict:
        try:
            claims = self.keys.refresh_claims(token)
        except jwt.ExpiredSignatureError as exc:
            raise OAuthError(400, "invalid_grant", "Token is not active") from exc
        except jwt.InvalidTokenError as exc:
            raise OAuthError(400, "invalid_grant", "Invalid refresh token") from exc
        if claims.get("azp") != request.client.client_id:
            raise OAuthError(400, "invalid_grant", "Invalid refresh token")
        bound = claims.get("cnf", {}).get("jkt")
        if bound is not None and bound != request.jkt:  # RFC 9449 §5: the same key, every refresh
            raise invalid_dpop("the refresh token is bound to another DPoP key")
        with self.lock:  # check-and-consume in one step: of two concurrent refreshes, one wins
            if claims["jti"] in self.revoked:
                raise OAuthError(400, "invalid_grant", "Session not active")
            if claims["jti"] in self.used_refresh:
                raise OAuthError(400, "invalid_grant", "Maximum allowed refresh token reuse exceeded")
            if self.config.rotate:
                self.used_refresh.add(claims["jti"])
        return claims

    # --- issuing --------------------------------------------------------------------------------
    def issue(
        self, session: Session, request: TokenRequest, with_refresh: bool, nonce: str | None = None
    ) -> JSONDict:
        form = request.form
        access_ttl = int_field(form, "access_ttl", self.config.access_ttl, 10**9)
        now = int(time.time())
        common = {"iss": request.issuer, "sub": session.sub, "azp": session.client_id}
        common |= {"iat": now, "sid": session.sid}
        access = self.access_token_claims(session, request, common, access_ttl)
        answer: JSONDict = {
            "access_token": self.keys.sign(access),
            "expires_in": access_ttl,
            "refresh_expires_in": 0,
            "token_type": "DPoP" if request.jkt else "Bearer",
            "not-before-policy": 0,
            "session_state": session.sid,
            "scope": session.scope,
        }
        if with_refresh:
            refresh_ttl = int_field(form, "refresh_ttl", self.config.refresh_ttl, 10**9)
            refresh = common | {"aud": request.issuer, "typ": "Refresh", "exp": now + refresh_ttl}
            refresh |= {"jti": str(uuid.uuid4()), "scope": session.scope}
            if session.jkt:
                refresh["cnf"] = {"jkt": session.jkt}
            answer["refresh_token"] = self.keys.sign_refresh(refresh)
            answer["refresh_expires_in"] = refresh_ttl
        if "openid" in session.scope.split():
            answer["id_token"] = self.id_token(session, common, now + access_ttl, nonce)
        return answer

    def access_token_claims(
        self, session: Session, request: TokenRequest, common: JSONDict, ttl: int
    ) -> JSONDict:
        claims = common | {
            "aud": "account",
            "typ": "Bearer",
            "exp": common["iat"] + ttl,
            "jti": str(uuid.uuid4()),
            "scope": session.scope,
        }
        claims |= user_claims(session.sub)
        if pad := int_field(request.form, "pad", 0, MAX_BODY):
            claims["pad"] = "x" * pad
        if request.jkt:
            claims["cnf"] = {"jkt": request.jkt}  # RFC 9449 §6.1
        return claims

    def id_token(self, session: Session, common: JSONDict, exp: int, nonce: str | None) -> str:
        profile = {k: v for k, v in user_claims(session.sub).items() if k in ("email", "preferred_username")}
        claims = common | {"aud": session.client_id, "typ": "ID", "exp": exp} | profile
        if nonce is not None:  # OIDC Core §3.1.3.7: the nonce of the authentication request, unchanged
            claims["nonce"] = nonce
        return self.keys.sign(claims | {"jti": str(uuid.uuid4())})

    # --- revocation, introspection, userinfo ----------------------------------------------------
    def revoke(self, body: bytes, authorization: str) -> None:
        self.count("revoke")
        form = parse_form(body)
        self.authenticate_client(form, authorization)
        token = form.get("token")
        if not token:
            raise OAuthError(400, "invalid_request", "Missing token parameter")
        try:
            claims = self.keys.refresh_claims(token, verify_exp=False)
        except jwt.InvalidTokenError:
            claims = self.keys.access_claims(token, verify_exp=False)
            if claims and self.config.refuse_access_revoke:
                raise OAuthError(400, "unsupported_token_type", "Access tokens cannot be revoked") from None
        if claims and isinstance(claims.get("jti"), str):
            self.mark_revoked(claims["jti"])
        # RFC 7009 §2.2: an invalid or unknown token gets 200 as well.

    def introspect(self, body: bytes, authorization: str) -> JSONDict:
        """RFC 7662: whether a token is live, and its claims if so. Only for confidential clients, which
        have credentials to prove who asks."""
        self.count("introspect")
        form = parse_form(body)
        if self.authenticate_client(form, authorization).public:
            raise self.invalid_client("Public client is not permitted to invoke token introspection endpoint")
        token = form.get("token")
        if not token:
            raise OAuthError(400, "invalid_request", "Missing token parameter")
        claims = self.live_claims(token)
        if claims is None:
            return {"active": False}  # §2.2: nothing more about a token that is not active
        username = user_claims(claims["sub"])["preferred_username"]
        return {"active": True} | claims | {"client_id": claims["azp"], "username": username}

    def live_claims(self, token: str) -> JSONDict | None:
        """The claims of an access or refresh token that is neither expired, revoked nor used up."""
        claims = self.keys.access_claims(token)
        if claims is not None:
            claims["token_type"] = "DPoP" if "cnf" in claims else "Bearer"
        else:
            try:
                claims = self.keys.refresh_claims(token)
            except jwt.InvalidTokenError:
                return None
        with self.lock:
            if claims["jti"] in self.revoked or claims["jti"] in self.used_refresh:
                return None
        return claims

    def userinfo(self, authorization: str) -> JSONDict:
        self.count("userinfo")
        scheme, _, token = authorization.partition(" ")
        claims = self.keys.access_claims(token.strip()) if scheme.lower() == "bearer" else None
        if claims is not None and claims["jti"] in self.revoked:
            claims = None
        if claims is None:
            description = "Token verification failed" if authorization else "Missing bearer token"
            realm = self.config.realm
            challenge = f'Bearer realm="{realm}", error="invalid_token", error_description="{description}"'
            raise OAuthError(401, "invalid_token", description, {"WWW-Authenticate": challenge})
        return {"sub": claims["sub"]} | user_claims(claims["sub"])

    # --- discovery ------------------------------------------------------------------------------
    def discovery(self, base: str) -> JSONDict:
        issuer = f"{base}/realms/{self.config.realm}"
        oidc = f"{base}{self.oidc_path}"
        auth_methods = ["client_secret_basic", "client_secret_post"]
        document = {
            "issuer": issuer,
            "authorization_endpoint": f"{oidc}/auth",
            "token_endpoint": f"{oidc}/token",
            "revocation_endpoint": f"{oidc}/revoke",
            "introspection_endpoint": f"{oidc}/token/introspect",
            "jwks_uri": f"{oidc}/certs",
            "userinfo_endpoint": f"{oidc}/userinfo",
            "grant_types_supported": list(GRANTS),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "code_challenge_methods_supported": ["S256"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", *DEFAULT_SCOPES, "offline_access"],
            "token_endpoint_auth_methods_supported": [*auth_methods, "none"],
            "revocation_endpoint_auth_methods_supported": [*auth_methods, "none"],
            "introspection_endpoint_auth_methods_supported": auth_methods,
            "claims_supported": ["sub", "iss", "email", "email_verified", "preferred_username", "tenant"],
        }
        if self.config.dpop_bind:
            document["dpop_signing_alg_values_supported"] = list(DPOP_ALGORITHMS)
        return document
