"""discovery.py: the public endpoints an authorization server's own metadata document names."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mitmproxy import http

from hooks import HookDriver as Proxy
from hooks import flow_for
from oauth_flows import (
    REVERSE_API,
    REVERSE_IDP,
    assert_refused,
)


def discovery_flow(path: str = "/dex/.well-known/openid-configuration") -> http.HTTPFlow:
    return flow_for("GET", f"http://idp.example{path}", mode=REVERSE_IDP)


DEX = {
    "issuer": "http://idp.example/dex",
    "jwks_uri": "http://idp.example/dex/keys",
    "authorization_endpoint": "http://idp.example/dex/auth",
    "token_endpoint": "http://idp.example/dex/token",
    "userinfo_endpoint": "http://idp.example/dex/userinfo",
}


async def learn_from(proxy: Proxy, document: dict[str, Any], path: str | None = None) -> None:
    flow = discovery_flow(path) if path else discovery_flow()
    assert await proxy.request(flow)
    await proxy.respond(
        flow, http.Response.make(200, json.dumps(document), {"Content-Type": "application/json"})
    )


async def test_a_discovery_document_makes_the_endpoints_it_names_public(proxy: Proxy) -> None:
    """Dex's key set is {issuer}/keys: no name the default filter knows, but the issuer's document says so."""
    keys = flow_for("GET", "http://idp.example/dex/keys", mode=REVERSE_IDP)
    await assert_refused(proxy, keys, 401, None)
    await learn_from(proxy, DEX)
    for path in ("/dex/keys", "/dex/auth?client_id=x&state=s"):
        assert await proxy.request(flow_for("GET", f"http://idp.example{path}", mode=REVERSE_IDP)), path
    proxy.configure(splittoken_log_joins=False)  # learnt endpoints outlive a reconfiguration
    assert await proxy.request(flow_for("GET", "http://idp.example/dex/keys", mode=REVERSE_IDP))
    # Only what it names as public: other endpoints, other methods, other origins still need a handle.
    await assert_refused(
        proxy, flow_for("GET", "http://idp.example/dex/userinfo", mode=REVERSE_IDP), 401, None
    )
    await assert_refused(proxy, flow_for("POST", "http://idp.example/dex/keys", mode=REVERSE_IDP), 401, None)
    await assert_refused(proxy, flow_for("GET", "http://api.example/dex/keys", mode=REVERSE_API), 401, None)


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({**DEX, "issuer": "http://idp.example/other"}, None),  # not this issuer's own document
        ({**DEX, "jwks_uri": "http://evil.example/dex/keys"}, None),  # another origin
        ({**DEX, "jwks_uri": "http://idp.example/api/keys"}, None),  # not beneath the issuer
        ({**DEX, "issuer": "http://idp.example"}, None),  # a root issuer's document lives at the root
        (DEX, "/api/.well-known/openid-configuration"),  # an API echoing what it was asked for
    ],
)
async def test_discovery_documents_cannot_make_other_paths_public(
    proxy: Proxy, document: dict[str, Any], path: str | None
) -> None:
    await learn_from(proxy, document, path)
    await assert_refused(proxy, flow_for("GET", "http://idp.example/dex/keys", mode=REVERSE_IDP), 401, None)
    await assert_refused(proxy, flow_for("GET", "http://idp.example/api/keys", mode=REVERSE_IDP), 401, None)
