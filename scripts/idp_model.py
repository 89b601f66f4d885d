"""What the demo identity provider knows: its clients, users and settings, the sessions and grants it keeps,
and its error answer. Data only: idp_core.py decides with it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from demo_http import loopback_origin

JSONDict = dict[str, Any]
GRANTS = ("authorization_code", "client_credentials", "password", "refresh_token")
DEFAULT_SCOPES = ["profile", "email"]


class OAuthError(Exception):
    """An RFC 6749 §5.2 error answer."""

    def __init__(self, status: int, error: str, description: str, headers: dict[str, str] | None = None):
        super().__init__(description)
        self.status, self.error, self.description = status, error, description
        self.headers = headers or {}

    def body(self) -> JSONDict:
        return {"error": self.error, "error_description": self.description}


# --- clients, users, sessions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Client:
    client_id: str
    secret: str | None  # None: a public client (a browser app), which has no secret to keep; PKCE instead
    grants: frozenset[str]
    # Keycloak's "http://127.0.0.1:*/*" and "http://localhost:*/*", with web origins "+" (the redirect
    # URIs' origins): any loopback port, as RFC 8252 §7.3 asks for apps on the user's machine.
    loopback_redirects: bool = False

    @property
    def public(self) -> bool:
        return self.secret is None

    def allows_redirect(self, uri: str) -> bool:
        # RFC 6749 §3.1.2: a redirection URI has no fragment.
        return self.loopback_redirects and loopback_origin(uri) is not None and "#" not in uri


CLIENTS = {
    "demo-client": Client(
        "demo-client", "demo-secret", frozenset({"client_credentials", "password", "refresh_token"})
    ),
    "demo-spa": Client(
        "demo-spa", None, frozenset({"authorization_code", "refresh_token"}), loopback_redirects=True
    ),
}
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
SUBJECT_OF = {name: sub for sub, name in SUBJECTS.items()}
DEMO_USER = "alice"  # whom the authorization endpoint signs in when the request names nobody


@dataclass(frozen=True)
class Session:
    """Who a set of tokens is for; a refresh carries it over to the new tokens."""

    client_id: str
    sub: str
    scope: str
    sid: str
    jkt: str | None = None  # the DPoP key a public client's refresh tokens are bound to (RFC 9449 §5)


@dataclass(frozen=True)
class CodeGrant:
    """What an authorization code stands for until it is exchanged, once."""

    session: Session
    redirect_uri: str
    code_challenge: str
    nonce: str | None
    expires: float


@dataclass(frozen=True)
class TokenRequest:
    form: dict[str, str]
    client: Client
    issuer: str
    jkt: str | None  # the thumbprint of the DPoP proof's key, when the answer is to be bound to it


@dataclass(frozen=True)
class Config:
    realm: str = "demo"
    access_ttl: int = 300
    refresh_ttl: int = 1800
    refresh_delay: float = 0.0  # seconds a refresh grant sleeps, so that tests can overlap two
    rotate: bool = True  # refresh tokens are single-use
    refuse_access_revoke: bool = False  # 400 unsupported_token_type for access tokens, as oidc-provider
    dpop_bind: bool = False  # bind access tokens to a valid DPoP proof's key (RFC 9449)


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
