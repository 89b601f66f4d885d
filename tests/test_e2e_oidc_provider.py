"""End to end against a real authorization server: panva's oidc-provider (npm) behind a real mitmdump.

The client does what it would do against any deployment: the authorization code flow with PKCE (the browser's
part straight to the provider, the code redeemed through the proxy), API calls, refresh with rotation,
revocation. The provider's own counters (/_stats) tell what reached it and which real tokens it consumed or
destroyed. One provider and one proxy serve the whole module.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from oidc_provider import (
    BASIC_CLIENT,
    INTROSPECTION_PATH,
    JWKS_PATH,
    POST_CLIENT,
    PROXY_OPTIONS,
    RESOURCE,
    REVOCATION_PATH,
    TOKEN_PATH,
    Client,
    provider_stats,
)
from procs import ManagedProcess
from stack import Proxy, start_proxy
from test_e2e import JWS_RE, echo_count, forwarded_authorization

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def oidc_proxy(
    oidc_provider: ManagedProcess, api: ManagedProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    assert oidc_provider.url and api.url
    store = tmp_path_factory.mktemp("oidc-provider-store") / "store"
    # What the API received is read from the echo API's answer, which the proxy redacts by default.
    options = {**PROXY_OPTIONS, "splittoken_redact_api_responses": "false"}
    started = start_proxy(oidc_provider.url, api.url, store=str(store), options=options)
    yield started
    started.stop()


def login(
    provider: ManagedProcess,
    proxy: Proxy,
    client: Client = BASIC_CLIENT,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    """The authorization code flow: the browser's part straight to the provider, the code redeemed through
    the proxy."""
    assert provider.url
    response = client.post(proxy.idp_url + TOKEN_PATH, client.authorize(provider.url), headers)
    assert response.status_code == 200, response.text
    return response


def refresh(proxy: Proxy, refresh_token: str, client: Client = BASIC_CLIENT) -> requests.Response:
    return client.post(
        proxy.idp_url + TOKEN_PATH, {"grant_type": "refresh_token", "refresh_token": refresh_token}
    )


def revoke(proxy: Proxy, token: str, hint: str, client: Client = BASIC_CLIENT) -> requests.Response:
    return client.post(proxy.idp_url + REVOCATION_PATH, {"token": token, "token_type_hint": hint})


def call_api(proxy: Proxy, handle: str) -> requests.Response:
    return requests.get(proxy.api_url + "/orders", headers={"Authorization": f"Bearer {handle}"}, timeout=10)


def api_token(proxy: Proxy, handle: str) -> str:
    """The credential the API behind the proxy received for ``handle``."""
    scheme, _, token = forwarded_authorization(call_api(proxy, handle)).partition(" ")
    assert scheme == "Bearer"
    return token


def api_claims(provider: ManagedProcess, proxy: Proxy, handle: str) -> dict:
    """The claims of the access token the API received for ``handle``, checked against the provider's key."""
    return verified(provider, api_token(proxy, handle), audience=RESOURCE)


def changes(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, int]:
    """The provider's counters that moved between two ``provider_stats``, by how much."""
    moved = {key: after[group][key] - count for group in before for key, count in before[group].items()}
    return {key: delta for key, delta in moved.items() if delta}


def verified(provider: ManagedProcess, token: str, audience: str) -> dict:
    """The claims of ``token``, which must be exactly what oidc-provider signed (its JWKS, RS256)."""
    key = jwt.PyJWKClient(f"{provider.url}{JWKS_PATH}").get_signing_key_from_jwt(token)
    return jwt.decode(token, key.key, algorithms=["RS256"], audience=audience, issuer=provider.url)


def dpop_proof(key: ec.EllipticCurvePrivateKey, method: str, url: str) -> str:
    """A DPoP proof (RFC 9449 §4.2) for the request ``method url``."""
    public = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    claims = {"htm": method, "htu": url, "iat": int(time.time()), "jti": str(uuid.uuid4())}
    return jwt.encode(claims, key, "ES256", headers={"typ": "dpop+jwt", "jwk": public})


@pytest.mark.parametrize("client", [BASIC_CLIENT, POST_CLIENT], ids=lambda c: c.auth_method)
def test_code_flow_tokens_are_split_and_the_api_gets_the_providers_jwt(
    oidc_provider, oidc_proxy: Proxy, client: Client
) -> None:
    response = login(oidc_provider, oidc_proxy, client)
    tokens = response.json()
    access, refresh_handle, id_token = tokens["access_token"], tokens["refresh_token"], tokens["id_token"]
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] > 0
    assert response.headers["Cache-Control"] == "no-store" and response.headers["Pragma"] == "no-cache"
    # Only the id_token, which is the client's to read, is still a JWS; it passes exactly as signed.
    assert JWS_RE.findall(response.text) == [id_token]
    assert verified(oidc_provider, id_token, audience=client.client_id)["sub"] == "alice"
    assert not JWS_RE.search(access) and not JWS_RE.search(refresh_handle) and len(refresh_handle) >= 43

    token = api_token(oidc_proxy, access)
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
    claims = verified(oidc_provider, token, audience=RESOURCE)
    assert claims["client_id"] == client.client_id and claims["sub"] == "alice"
    assert token.rsplit(".", 1)[1] == access
    # A refresh handle is no access token.
    assert call_api(oidc_proxy, refresh_handle).status_code == 401


def test_client_credentials_tokens_are_split(oidc_provider, oidc_proxy: Proxy) -> None:
    response = POST_CLIENT.post(oidc_proxy.idp_url + TOKEN_PATH, {"grant_type": "client_credentials"})
    assert response.status_code == 200, response.text
    assert not JWS_RE.search(response.text)
    claims = api_claims(oidc_provider, oidc_proxy, response.json()["access_token"])
    assert claims["sub"] == claims["client_id"] == POST_CLIENT.client_id


def test_refresh_rotates_at_the_provider_and_a_late_replay_stays_at_the_proxy(
    oidc_provider, oidc_proxy: Proxy
) -> None:
    tokens = login(oidc_provider, oidc_proxy).json()
    first_jti = api_claims(oidc_provider, oidc_proxy, tokens["access_token"])["jti"]
    before = provider_stats(oidc_provider.url)

    refreshed = refresh(oidc_proxy, tokens["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    new = refreshed.json()
    assert JWS_RE.findall(refreshed.text) == [new["id_token"]]
    assert new["refresh_token"] != tokens["refresh_token"] and new["access_token"] != tokens["access_token"]
    after = provider_stats(oidc_provider.url)
    assert changes(before, after) == {"/token": 1, "grant.success": 1, "refresh_token.consumed": 1}
    assert api_claims(oidc_provider, oidc_proxy, new["access_token"])["jti"] != first_jti

    # The rotated handle, within the grace period, gets the same answer from the proxy. Had the proxy sent the
    # consumed refresh token on, oidc-provider would have taken it for theft and revoked the whole grant.
    before = provider_stats(oidc_provider.url)
    replay = refresh(oidc_proxy, tokens["refresh_token"])
    assert replay.status_code == 200 and replay.json() == new
    assert changes(before, provider_stats(oidc_provider.url)) == {}
    assert refresh(oidc_proxy, new["refresh_token"]).status_code == 200


def test_revoking_the_refresh_handle_revokes_the_grant_at_the_provider(
    oidc_provider, oidc_proxy: Proxy
) -> None:
    tokens = login(oidc_provider, oidc_proxy, POST_CLIENT).json()
    before = provider_stats(oidc_provider.url)
    revoked = revoke(oidc_proxy, tokens["refresh_token"], "refresh_token", POST_CLIENT)
    assert revoked.status_code == 200, revoked.text
    after = provider_stats(oidc_provider.url)
    # The real refresh token reached the provider, which destroyed it and the grant behind it.
    destroyed = {"/token/revocation": 1, "refresh_token.destroyed": 1, "grant.revoked": 1}
    assert changes(before, after) == destroyed

    again = refresh(oidc_proxy, tokens["refresh_token"], POST_CLIENT)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert changes(after, provider_stats(oidc_provider.url)) == {}  # refused by the proxy itself


def test_revoking_the_access_handle_kills_it_though_the_provider_cannot_revoke_jwts(
    oidc_provider, api, oidc_proxy: Proxy
) -> None:
    tokens = login(oidc_provider, oidc_proxy).json()
    assert api_claims(oidc_provider, oidc_proxy, tokens["access_token"])["sub"] == "alice"
    before = provider_stats(oidc_provider.url)
    revoked = revoke(oidc_proxy, tokens["access_token"], "access_token")
    # oidc-provider answered 400 unsupported_token_type for the JWT; only the proxy held it, and it forgot it.
    assert revoked.status_code == 200, revoked.text
    refused = {"/token/revocation": 1, "revocation.error": 1}
    assert changes(before, provider_stats(oidc_provider.url)) == refused

    calls = echo_count(api)
    dead = call_api(oidc_proxy, tokens["access_token"])
    assert dead.status_code == 401 and 'error="invalid_token"' in dead.headers["WWW-Authenticate"]
    assert echo_count(api) == calls
    # Logging out of one access token is not the end of the session.
    assert refresh(oidc_proxy, tokens["refresh_token"]).status_code == 200


def test_discovery_through_the_proxy_keeps_clients_behind_it(oidc_proxy: Proxy) -> None:
    """With PROXY_OPTIONS an OIDC client library pointed at the proxy finds the proxy's endpoints, and our
    paths are the provider's."""
    discovery = requests.get(oidc_proxy.idp_url + "/.well-known/openid-configuration", timeout=10)
    assert discovery.status_code == 200
    document = discovery.json()
    assert document["token_endpoint"] == oidc_proxy.idp_url + TOKEN_PATH
    assert document["revocation_endpoint"] == oidc_proxy.idp_url + REVOCATION_PATH
    assert document["introspection_endpoint"] == oidc_proxy.idp_url + INTROSPECTION_PATH
    assert document["jwks_uri"] == oidc_proxy.idp_url + JWKS_PATH
    assert requests.get(document["jwks_uri"], timeout=10).json()["keys"]


def test_a_dpop_proof_reaches_the_provider_which_binds_the_token(oidc_provider, oidc_proxy: Proxy) -> None:
    """The proof is made for the URL the client uses, the proxy's; oidc-provider checks it and binds."""
    key = ec.generate_private_key(ec.SECP256R1())
    proof = dpop_proof(key, "POST", oidc_proxy.idp_url + TOKEN_PATH)
    tokens = login(oidc_provider, oidc_proxy, headers={"DPoP": proof}).json()
    assert tokens["token_type"] == "DPoP"
    assert not JWS_RE.search(tokens["access_token"]) and not JWS_RE.search(tokens["refresh_token"])
