"""panva's oidc-provider (npm), the second, real authorization server of the end-to-end tests: how to start
scripts/oidc_provider/server.mjs, and how a client gets tokens from it without a browser.

    with start_oidc_provider() as provider:
        form = BASIC_CLIENT.authorize(provider.url)  # its login and consent pages, filled in
        tokens = BASIC_CLIENT.post(proxy_url + TOKEN_PATH, form).json()

Its endpoints are oidc-provider's defaults. The token path ends in /token, as the proxy's default token filter
expects; the revocation path does not end in /revoke: a proxy in front of it needs PROXY_OPTIONS.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import requests

from procs import ManagedProcess, listening_on, start_process

PROJECT = Path(__file__).resolve().parent / "oidc_provider"
AUTHORIZATION_PATH = "/auth"
TOKEN_PATH = "/token"
REVOCATION_PATH = "/token/revocation"
INTROSPECTION_PATH = "/token/introspection"
JWKS_PATH = "/jwks"
# What server.mjs registers: the audience of every access token, and the clients' one redirect URI.
RESOURCE = "urn:splittoken:api"
REDIRECT_URI = "http://127.0.0.1/callback"
SCOPE = "openid offline_access email api:read"
# What a user sets on mitmdump in front of oidc-provider (--set name=value):
PROXY_OPTIONS = {
    # Its revocation endpoint does not end in /revoke, the proxy's default.
    "splittoken_revoke_filter": '~m POST & ~u "^[^?]*/token/revocation($|[?])"',
    # oidc-provider builds its endpoint URLs from the Host header: with mitmproxy's default (the upstream's
    # name) discovery would send clients around the proxy, and DPoP proofs for the proxy's URL would fail
    # its htu check.
    "keep_host_header": "true",
}
# Login and consent take seven steps (pages and redirects): a flow that takes many more is going in circles.
MAX_AUTHORIZATION_STEPS = 12


def start_oidc_provider(*args: str, echo: str | None = None) -> ManagedProcess:
    """server.mjs on a free loopback port; ``args`` go to it (``--access-ttl 60``, ``--refresh-ttl 600``)."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not on PATH: oidc-provider runs on Node.js (20 or later)")
    if not (PROJECT / "node_modules" / "oidc-provider").is_dir():
        raise RuntimeError(f"oidc-provider is not installed: run `npm ci --prefix {PROJECT}` (make install)")
    return start_process(
        [node, str(PROJECT / "server.mjs"), "--port", "0", *args], listening_on("oidc-provider"), echo=echo
    )


@dataclass(frozen=True)
class Client:
    """A confidential client registered in server.mjs; oidc-provider accepts only its registered method."""

    client_id: str
    client_secret: str
    auth_method: str  # client_secret_basic or client_secret_post

    def post(
        self, url: str, form: Mapping[str, str], headers: Mapping[str, str] | None = None
    ) -> requests.Response:
        """POST ``form`` to a token, revocation or introspection endpoint, authenticated as this client."""
        data = dict(form)
        auth = None
        if self.auth_method == "client_secret_post":
            data |= {"client_id": self.client_id, "client_secret": self.client_secret}
        else:
            auth = (self.client_id, self.client_secret)
        return requests.post(url, data=data, auth=auth, headers=headers, timeout=10)

    def authorize(self, provider_url: str, login: str = "alice", scope: str = SCOPE) -> dict[str, str]:
        """The browser's part of the authorization code flow with PKCE (RFC 6749 §4.1, RFC 7636), straight
        to the provider: its development login and consent pages are filled in and submitted as a person
        would. Returns the form of the token request that redeems the code."""
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        state = secrets.token_urlsafe(16)
        query = {
            "client_id": self.client_id, "response_type": "code", "redirect_uri": REDIRECT_URI,
            "scope": scope, "resource": RESOURCE, "state": state,
            "code_challenge": challenge, "code_challenge_method": "S256",
            # oidc-provider issues a refresh token (offline_access) only after an explicit consent.
            "prompt": "consent",
        }  # fmt: skip
        with requests.Session() as browser:
            url = provider_url + AUTHORIZATION_PATH
            page = browser.get(url, params=query, allow_redirects=False, timeout=10)
            for _ in range(MAX_AUTHORIZATION_STEPS):
                if page.is_redirect:
                    location = urljoin(page.url, page.headers["Location"])
                    if location.startswith(REDIRECT_URI + "?"):
                        return _redeemable(parse_qs(urlsplit(location).query), state, verifier)
                    page = browser.get(location, allow_redirects=False, timeout=10)
                    continue
                page.raise_for_status()
                action, fields = _form(page.text)
                if fields.get("prompt") == "login":
                    fields |= {"login": login, "password": "any"}  # devInteractions accepts any password
                page = browser.post(urljoin(page.url, action), data=fields, allow_redirects=False, timeout=10)
        raise RuntimeError(f"authorization did not reach {REDIRECT_URI} in {MAX_AUTHORIZATION_STEPS} steps")


def provider_stats(provider_url: str) -> dict[str, dict[str, int]]:
    """Requests that reached the provider's token, revocation and introspection endpoints, and how often its
    token events fired (``refresh_token.consumed``, ``grant.revoked`` …): server.mjs's /_stats."""
    response = requests.get(provider_url + "/_stats", timeout=10)
    response.raise_for_status()
    return response.json()


BASIC_CLIENT = Client("splittoken-basic", "splittoken-basic-secret", "client_secret_basic")
POST_CLIENT = Client("splittoken-post", "splittoken-post-secret", "client_secret_post")


def _redeemable(answer: dict[str, list[str]], state: str, verifier: str) -> dict[str, str]:
    if "error" in answer:
        raise RuntimeError(f"authorization refused: {answer['error'][0]}: {answer.get('error_description')}")
    if answer.get("state") != [state]:
        raise RuntimeError("authorization answered with another state")
    return {
        "grant_type": "authorization_code", "code": answer["code"][0],
        "redirect_uri": REDIRECT_URI, "code_verifier": verifier,
    }  # fmt: skip


class _FormReader(HTMLParser):
    """The action and the named inputs of the first form on a page."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self._in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "form" and self.action is None:
            self.action, self._in_form = attributes.get("action") or "", True
        elif tag == "input" and self._in_form and attributes.get("name"):
            self.fields[str(attributes["name"])] = attributes.get("value") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False


def _form(html: str) -> tuple[str, dict[str, str]]:
    reader = _FormReader()
    reader.feed(html)
    if reader.action is None:
        raise RuntimeError("the authorization server answered a page without a form")
    return reader.action, reader.fields
