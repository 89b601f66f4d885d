"""A single-page app with a real OIDC client library, oidc-client-ts, in headless Chromium, through mitmdump.

The page (tests/spa/, served by a static server on its own loopback origin) does the authorization code flow
with PKCE against the demo identity provider through the proxy's identity-provider listener, calls the echo
API through the API listener with the handle it got, and refreshes. Then it calls the API with a handle
nobody issued, and refreshes with a refresh handle nobody issued: it must be able to read the proxy's own
refusals (status, WWW-Authenticate, the OAuth error), not get a network error, which needs CORS headers on
the answers the proxy makes itself (issue 10, item 10).

oidc-client-ts comes from the npm registry: the test runs `npm ci` in tests/spa/ when node_modules is missing
or older than package-lock.json.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from playwright.sync_api import Browser, Page, expect

import idp_crypto
from procs import ManagedProcess, start_process
from stack import ROOT, Proxy, start_api, start_idp, start_proxy
from test_browser import chromium

pytestmark = pytest.mark.browser

SPA_DIR = ROOT / "tests" / "spa"
LIBRARY = SPA_DIR / "node_modules" / "oidc-client-ts" / "dist" / "browser" / "oidc-client-ts.min.js"
TIMEOUT_MS = 15_000
# Shaped like real handles (base64url), never issued: the proxy must refuse them itself.
UNKNOWN_HANDLE = "Zm9yZ2VkLWhhbmRsZS10aGF0LXdhcy1uZXZlci1pc3N1"
UNKNOWN_REFRESH_HANDLE = "bm90LWEtcmVmcmVzaC1oYW5kbGUtYW55b25lLWlzc3Vl"
SERVING = re.compile(r"Serving HTTP on (?P<host>\S+) port (?P<port>\d+)")


def npm_ci() -> None:
    """node_modules as package-lock.json says; npm ci only when it is missing or older than the lock."""
    installed = SPA_DIR / "node_modules" / ".package-lock.json"  # npm's record of what it installed
    lock = SPA_DIR / "package-lock.json"
    if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime and LIBRARY.exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is missing: the SPA test installs oidc-client-ts with it (Node.js 20)", False)
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"], cwd=SPA_DIR, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"npm ci in {SPA_DIR} failed:\n{done.stdout}\n{done.stderr}", pytrace=False)


def start_static_server(directory: Path) -> ManagedProcess:
    """The page's own origin: Python's static file server on a free loopback port."""
    args = [sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(directory)]
    return start_process(args, SERVING)


@pytest.fixture(scope="module")
def page_url() -> Iterator[str]:
    """The SPA, on the loopback origin of its own static server."""
    npm_ci()
    with start_static_server(SPA_DIR) as server:
        yield f"{server.url}/index.html"


@pytest.fixture(scope="module")
def spa_stack(tmp_path_factory: pytest.TempPathFactory, page_url: str) -> Iterator[dict[str, Any]]:
    """The identity provider, the echo API and mitmdump in front of both."""
    # Every other option at its default: every request to either listener is an API route (userinfo gets
    # the JWT in place of the handle), but for the authorization page, discovery and key set, which the
    # default public filter lets pass without credentials.
    options = {
        # The identity provider names its endpoints after the Host header: with the client's Host kept, its
        # discovery document sends the page back through the proxy, as a Keycloak behind one is set up.
        "keep_host_header": "true",
    }
    with contextlib.ExitStack() as started:
        idp = started.enter_context(start_idp())
        api = started.enter_context(start_api())
        assert idp.url and api.url
        proxy = start_proxy(
            idp.url, api.url, store=str(tmp_path_factory.mktemp("spa") / "store"), options=options
        )
        started.callback(proxy.stop)
        yield {"idp": idp, "api": api, "proxy": proxy, "page_url": page_url}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def sign_in(browser: Browser, page_url: str, config: dict[str, str], server: ManagedProcess | Proxy) -> Page:
    """A new page that has done the code flow: the library holds the tokens (through the proxy: handles)."""
    page = browser.new_page()  # a context of its own: its storage and keys start empty
    page.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    with explained_failure(page, server):
        page.goto(f"{page_url}?{urlencode(config)}")
        expect(page.locator("body")).to_have_attribute("data-state", "ready")
        # Not awaited: the page navigates away, to the authorization endpoint and back with a code.
        page.evaluate("() => void spa.login()")
        expect(page.locator("body")).to_have_attribute("data-state", "signed-in")
    return page


@pytest.fixture(scope="module")
def signed_in(browser: Browser, spa_stack: dict[str, Any]) -> Iterator[Page]:
    proxy: Proxy = spa_stack["proxy"]
    config = {"authority": f"{proxy.idp_url}/realms/demo", "api": proxy.api_url}
    page = sign_in(browser, spa_stack["page_url"], config, proxy)
    yield page
    page.close()


@contextlib.contextmanager
def explained_failure(page: Page, server: ManagedProcess | Proxy) -> Iterator[None]:
    """A failed wait says what the page showed and what the server logged (redacted handles only)."""
    try:
        yield
    except Exception as e:
        state = page.locator("body").get_attribute("data-state", timeout=1000)
        raise AssertionError(
            f"{e}\n\npage at {page.url}, state {state!r}\nthe server's output, last lines:\n"
            + "\n".join(server.output().splitlines()[-30:])
        ) from e


def stats(process: ManagedProcess) -> dict[str, Any]:
    return requests.get(f"{process.url}/_stats", timeout=10).json()


@pytest.mark.timeout(120)  # npm ci on a cold cache, a hung browser or proxy must not hang CI
def test_spa_code_flow_with_pkce_gets_handles_calls_the_api_and_refreshes(
    signed_in: Page, spa_stack: dict[str, Any]
) -> None:
    page = signed_in
    user = page.evaluate("spa.summary()")
    assert user["accessIsHandle"] and not user["accessIsJwt"], "the page got a JWT instead of a handle"
    assert user["refreshIsHandle"] and not user["refreshIsJwt"], "the page got the real refresh token"
    assert user["idTokenIsJwt"] and user["tokenType"] == "Bearer"  # the id_token is the client's to read
    profile = user["profile"]
    assert profile["email"] == "alice@example.com" and profile["preferred_username"] == "alice"
    assert profile["tenant"] == "acme"  # from userinfo, which got the JWT in place of the handle
    assert stats(spa_stack["idp"])["token"]["authorization_code"] == 1  # the code went to the IdP

    called = page.evaluate("spa.callApi('/orders')")
    assert called["status"] == 200, called
    assert called["jwtClaims"]["sub"] == profile["sub"] and called["jwtClaims"]["azp"] == "demo-spa"

    refreshed = page.evaluate("spa.refresh()")
    assert refreshed["accessChanged"] and refreshed["refreshChanged"], "the refresh gave the same handles"
    assert refreshed["accessIsHandle"] and refreshed["refreshIsHandle"] and not refreshed["accessIsJwt"]
    assert refreshed["profile"]["sub"] == profile["sub"]
    assert stats(spa_stack["idp"])["token"]["refresh_token"] == 1
    again = page.evaluate("spa.callApi('/orders')")
    assert again["status"] == 200 and again["jwtClaims"]["sub"] == profile["sub"], again

    # What reached the API was a JWT each time (checked here, not printed: a failure shows no token).
    authorizations = stats(spa_stack["api"])["authorizations"]
    assert len(authorizations) == 2
    assert all(re.fullmatch(r"Bearer [\w-]+\.[\w-]+\.[\w-]+", a) for a in authorizations), "not JWTs"


@pytest.mark.timeout(120)
def test_spa_reads_the_proxys_own_refusals(signed_in: Page) -> None:
    """Until the proxy puts CORS headers on the answers it makes itself, the browser hides them from the
    page: this fails with a network error (issue 10, item 10)."""
    refused = signed_in.evaluate("([path, handle]) => spa.callApi(path, handle)", ["/orders", UNKNOWN_HANDLE])
    assert "networkError" not in refused, (
        f"the page cannot read the proxy's 401 (no CORS headers on it): {refused['networkError']}"
    )
    assert refused["status"] == 401 and refused["error"] == "invalid_token", refused
    assert refused["wwwAuthenticate"], "WWW-Authenticate is not exposed to the page"
    challenge = refused["wwwAuthenticate"]
    assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge, challenge

    refresh = signed_in.evaluate("(handle) => spa.refreshWith(handle)", UNKNOWN_REFRESH_HANDLE)
    assert refresh.get("error") == "invalid_grant", f"the library could not read the refusal: {refresh}"


@pytest.mark.timeout(120)
def test_dpop_bind_with_the_librarys_dpop_proofs(browser: Browser, page_url: str) -> None:
    """The demo identity provider's --dpop-bind against a real DPoP client: the library's proofs verify, the
    access token is bound to the library's key, and a refresh proves the same key (RFC 9449 §5). Straight to
    the identity provider: the proxy's own DPoP handling is another matter (issue 13)."""
    with start_idp("--dpop-bind") as idp:
        config = {"authority": f"{idp.url}/realms/demo", "api": idp.url, "dpop": "1"}
        page = sign_in(browser, page_url, config, idp)
        try:
            user = page.evaluate("spa.summary()")
            assert user["tokenType"] == "DPoP" and user["accessIsJwt"], user["tokenType"]
            jkt = idp_crypto.jwk_thumbprint(page.evaluate("spa.proofKey()"))
            assert user["accessCnf"] == {"jkt": jkt}
            refreshed = page.evaluate("spa.refresh()")
            assert refreshed["accessChanged"] and refreshed["refreshChanged"]
            assert refreshed["tokenType"] == "DPoP" and refreshed["accessCnf"] == {"jkt": jkt}
            grants = {"authorization_code": 1, "client_credentials": 0, "password": 0, "refresh_token": 1}
            assert stats(idp)["token"] == grants | {"errors": 0}  # every proof verified
        finally:
            page.close()
