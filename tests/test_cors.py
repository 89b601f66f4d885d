"""cors.py: CORS on the answers the proxy makes itself, as the upstream grants it (issue 10, property 10)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mitmproxy import http

from hooks import HookDriver as Proxy
from hooks import flow_for
from oauth_flows import (
    API,
    REVERSE_API,
    api_flow,
    assert_error,
    assert_refused,
    body_of,
    joined,
    login,
    store_down,
)

PAGE = "http://127.0.0.1:5173"


def from_page(flow: http.HTTPFlow, origin: str = PAGE) -> http.HTTPFlow:
    flow.request.headers["Origin"] = origin
    return flow


async def granted(proxy: Proxy, allow_origin: str, credentials: bool = True, url: str = API) -> None:
    """The upstream answers a preflight from the page: it may read what it asks for."""
    preflight = flow_for(
        "OPTIONS", url, headers={"Origin": PAGE, "Access-Control-Request-Method": "GET"}, mode=REVERSE_API
    )
    assert await proxy.request(preflight)
    headers = {"Access-Control-Allow-Origin": allow_origin, "Access-Control-Allow-Methods": "GET"}
    if credentials:
        headers["Access-Control-Allow-Credentials"] = "true"
    await proxy.respond(preflight, http.Response.make(204, b"", headers))


async def test_api_refusals_carry_the_cors_headers_the_upstream_grants(proxy: Proxy) -> None:
    await granted(proxy, PAGE)
    flow = from_page(api_flow("Bearer " + "A" * 43))
    await assert_refused(proxy, flow, 401, "invalid_token")
    headers = flow.response.headers
    assert headers["Access-Control-Allow-Origin"] == PAGE
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert {"WWW-Authenticate", "Retry-After"} <= {
        h.strip() for h in headers["Access-Control-Expose-Headers"].split(",")
    }
    assert headers["Vary"] == "Origin"


async def test_cors_is_granted_per_origin_and_per_upstream(proxy: Proxy) -> None:
    await granted(proxy, PAGE)
    other_page = from_page(api_flow("Bearer " + "A" * 43), "http://127.0.0.1:9999")
    await assert_refused(proxy, other_page, 401, "invalid_token")
    assert "Access-Control-Allow-Origin" not in other_page.response.headers
    assert other_page.response.headers["Vary"] == "Origin"  # the answer depends on the origin
    other_upstream = from_page(
        api_flow("Bearer " + "A" * 43, url="http://other.example/x", mode="reverse:http://other.example")
    )
    await assert_refused(proxy, other_upstream, 401, "invalid_token")
    assert "Access-Control-Allow-Origin" not in other_upstream.response.headers


async def test_cors_never_grants_any_origin_with_credentials(proxy: Proxy) -> None:
    await granted(proxy, "*", credentials=True)  # browsers refuse that pair: it grants no credentials
    flow = from_page(api_flow("Bearer " + "A" * 43))
    await assert_refused(proxy, flow, 401, "invalid_token")
    assert flow.response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in flow.response.headers


async def test_configured_cors_origins_read_the_proxys_refusals(proxy: Proxy, monkeypatch: Any) -> None:
    proxy.configure(splittoken_cors_origins=["http://127.0.0.1:5173"])
    _, client = await login(proxy)
    assert proxy.addon.vault
    monkeypatch.setattr(proxy.addon.vault.store, "get", store_down)
    flow = from_page(api_flow(f"Bearer {body_of(client)['access_token']}"))
    await assert_refused(proxy, flow, 503, "temporarily_unavailable")
    assert flow.response.headers["Access-Control-Allow-Origin"] == PAGE
    assert flow.response.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Retry-After" in flow.response.headers["Access-Control-Expose-Headers"]
    proxy.configure(splittoken_cors_origins=["*"])
    flow = from_page(api_flow(f"Bearer {body_of(client)['access_token']}"))
    await assert_refused(proxy, flow, 503, "temporarily_unavailable")
    assert flow.response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in flow.response.headers


async def test_refusals_of_echoing_answers_carry_cors_too(proxy: Proxy) -> None:
    await granted(proxy, PAGE)
    token, _, flow = await joined(proxy)
    from_page(flow)
    upstream = http.Response.make(200, json.dumps({"echo": token}).encode("utf-16"))
    upstream.headers["Access-Control-Allow-Origin"] = PAGE
    answer = await proxy.respond(flow, upstream)
    assert_error(answer, 502, "server_error")
    assert answer.headers["Access-Control-Allow-Origin"] == PAGE


async def test_a_failure_judging_an_api_answer_refuses_it(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever goes wrong while an API's answer is searched for the JWT, the answer does not leave: 502,
    not mitmproxy's default of passing it on."""
    fields, flow = await joined_with_a_bug_in(proxy, monkeypatch, "response")
    echoed = http.Response.make(200, json.dumps({"token": fields["access_token"]}))
    answer = await proxy.respond(flow, echoed)
    assert answer.status_code == 502
    assert fields["access_token"].encode() not in (answer.content or b"")
    assert flow.metadata["splittoken"]["refused"]  # published: mitmweb shows why


async def test_a_failure_on_an_api_answers_headers_closes_the_flow(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    fields, flow = await joined_with_a_bug_in(proxy, monkeypatch, "responseheaders")
    flow.response = http.Response.make(200, b"{}", {"x-debug": fields["access_token"]})
    proxy.addon.responseheaders(flow)
    assert flow.error is not None and flow.error.msg == "Connection killed."


async def joined_with_a_bug_in(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch, hook: str
) -> tuple[dict[str, Any], http.HTTPFlow]:
    """A joined API flow, with the API route's ``hook`` raising from now on."""
    fields, client = await login(proxy)
    flow = api_flow(f"Bearer {body_of(client)['access_token']}")
    assert await proxy.request(flow)

    def broken(*_: Any) -> None:
        raise RuntimeError(f"a bug in {hook}")

    monkeypatch.setattr(proxy.addon.routes.api, hook, broken)
    return fields, flow
