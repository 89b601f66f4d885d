"""api_route.py: handles re-joined into JWTs on API routes, and everything refused there."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from mitmproxy import http

from hooks import HookDriver as Proxy
from hooks import flow_for
from oauth_flows import (
    API,
    REVERSE_API,
    REVERSE_IDP,
    api_flow,
    assert_refused,
    body_of,
    login,
    make_jwt,
    store_down,
)
from splittoken import api_route


async def test_api_join_bearer_and_bare(proxy: Proxy) -> None:
    fields, client = await login(proxy)
    handle = body_of(client)["access_token"]
    for value in (f"Bearer {handle}", f"bearer {handle}", handle):
        flow = api_flow(value)
        assert await proxy.request(flow)
        assert flow.request.headers.get_all("Authorization") == [f"Bearer {fields['access_token']}"]
        assert flow.comment.startswith("split-token: re-joined")
        assert fields["access_token"] not in flow.comment
    assert proxy.addon.counters["joins"] == 3


async def test_unknown_handle_is_refused_and_not_forwarded(proxy: Proxy) -> None:
    await login(proxy)
    flow = api_flow("Bearer " + "A" * 43)
    await assert_refused(proxy, flow, 401, "invalid_token")
    challenge = flow.response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="splittoken", error="invalid_token"')
    assert flow.request.headers["Authorization"] == "Bearer " + "A" * 43
    assert flow.marked


async def test_refresh_handle_on_api_route_is_refused(proxy: Proxy) -> None:
    _, client = await login(proxy)
    flow = api_flow(f"Bearer {body_of(client)['refresh_token']}")
    await assert_refused(proxy, flow, 401, "invalid_token")


async def test_client_jwt_is_refused_unless_allowed(proxy: Proxy) -> None:
    token = make_jwt()
    flow = api_flow(f"Bearer {token}")
    await assert_refused(proxy, flow, 401, "invalid_token")
    proxy.configure(splittoken_allow_client_jwt=True)
    flow = api_flow(f"Bearer {token}")
    assert await proxy.request(flow)
    assert flow.request.headers["Authorization"] == f"Bearer {token}"


async def test_no_authorization_is_a_challenge_without_error(proxy: Proxy) -> None:
    flow = api_flow()
    assert not await proxy.request(flow)
    assert flow.response is not None
    assert flow.response.status_code == 401
    assert flow.response.headers["WWW-Authenticate"] == 'Bearer realm="splittoken"'
    assert "error" not in json.loads(flow.response.content or b"")


@pytest.mark.parametrize(
    "authorization",
    [["Basic YWxpY2U6cHc="], ["DPoP abc"], ["Bearer a", "Bearer b"], [""], ["Bearer a+b/c="]],
)
async def test_malformed_authorization_is_400(proxy: Proxy, authorization: list[str]) -> None:
    flow = api_flow(*authorization)
    await assert_refused(proxy, flow, 400, "invalid_request")


async def test_regular_mode_with_empty_api_filter_is_untouched(proxy: Proxy) -> None:
    _, client = await login(proxy)
    handle = body_of(client)["access_token"]
    for mode in (None, "regular", "transparent", "socks5", "upstream:http://up.example:8080"):
        flow = api_flow(f"Bearer {handle}", mode=mode)
        assert await proxy.request(flow)
        assert flow.request.headers["Authorization"] == f"Bearer {handle}"
        assert "splittoken" not in flow.metadata
        flow = api_flow(mode=mode)  # no credentials: not our business either
        assert await proxy.request(flow)


async def test_anchored_api_filter_joins_only_that_host(proxy: Proxy) -> None:
    proxy.configure(splittoken_api_filter=r"~d ^api\.example\.com$")
    fields, client = await login(proxy)
    handle = body_of(client)["access_token"]
    flow = api_flow(f"Bearer {handle}", url="http://api.example.com/items", mode=None)
    assert await proxy.request(flow)
    assert flow.request.headers["Authorization"] == f"Bearer {fields['access_token']}"
    for url in (
        "http://api.example.com.evil.net/items",
        "http://evil.net/api.example.com",
        "http://xapi.example.com/",
    ):
        flow = api_flow(f"Bearer {handle}", url=url, mode=None)
        assert await proxy.request(flow)
        assert flow.request.headers["Authorization"] == f"Bearer {handle}", url


async def test_anchored_api_filter_is_not_fooled_by_a_host_header(proxy: Proxy) -> None:
    # ~d also matches pretty_host, i.e. the Host header, which the client writes: a request sent to
    # evil.net with "Host: api.example.com" matches the anchored filter, and the JWT goes to evil.net.
    proxy.configure(splittoken_api_filter=r"~d ^api\.example\.com$")
    fields, client = await login(proxy)
    handle = body_of(client)["access_token"]
    flow = api_flow(f"Bearer {handle}", url="http://evil.net/steal", mode=None, host="api.example.com")
    assert flow.request.host == "evil.net"
    await proxy.request(flow)
    assert fields["access_token"] not in flow.request.headers.get("Authorization", "")


async def test_store_read_failure_on_api_route_is_503_and_not_forwarded(
    proxy: Proxy, monkeypatch: Any
) -> None:
    _, client = await login(proxy)
    handle = body_of(client)["access_token"]
    assert proxy.addon.vault
    monkeypatch.setattr(proxy.addon.vault.store, "get", store_down)
    flow = api_flow(f"Bearer {handle}")
    await assert_refused(proxy, flow, 503, "temporarily_unavailable")
    assert "Retry-After" in flow.response.headers
    assert flow.request.headers["Authorization"] == f"Bearer {handle}"


async def test_unexpected_exception_in_api_route_is_not_forwarded(proxy: Proxy, monkeypatch: Any) -> None:
    _, client = await login(proxy)
    handle = body_of(client)["access_token"]
    monkeypatch.setattr(api_route.jws, "join", lambda *_: 1 / 0)
    flow = api_flow(f"Bearer {handle}")
    assert not await proxy.request(flow)
    assert flow.response is not None
    assert flow.response.status_code >= 500


async def test_api_route_streaming_is_left_alone(proxy: Proxy) -> None:
    flow = api_flow("Bearer " + "A" * 43, mode=None)
    flow.request.stream = True
    result = proxy.addon.requestheaders(flow)
    assert result is None
    assert flow.request.stream is True
    flow.response = http.Response.make(200, b"x")
    flow.response.stream = True
    proxy.addon.responseheaders(flow)
    assert flow.response.stream is True


async def test_cors_preflight_passes_without_credentials(proxy: Proxy) -> None:
    flow = flow_for(
        "OPTIONS", API, headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"},
        mode=REVERSE_API,
    )  # fmt: skip
    assert await proxy.request(flow)
    assert "authorization" not in flow.request.headers


async def test_trace_is_refused_on_api_routes(proxy: Proxy) -> None:
    fields, client = await login(proxy)
    flow = api_flow(f"Bearer {body_of(client)['access_token']}")
    flow.request.method = "TRACE"
    await assert_refused(proxy, flow, 400, "invalid_request")
    assert fields["access_token"] not in flow.request.headers.get("authorization", "")


@pytest.mark.parametrize(
    ("scheme", "sni", "joined"),
    [("https", "api.example.com", True), ("https", "evil.net", False), ("http", None, False)],
)
async def test_address_destinations_are_checked_against_the_tls_server_name(
    proxy: Proxy, scheme: str, sni: str | None, joined: bool
) -> None:
    """Transparent-style modes: the destination is an address, and the name it answers to is the SNI."""
    proxy.configure(splittoken_api_filter=r"~d ^api\.example\.com$")
    fields, client = await login(proxy)
    flow = api_flow(
        f"Bearer {body_of(client)['access_token']}", url=f"{scheme}://203.0.113.7/orders", mode="transparent",
        host="api.example.com",
    )  # fmt: skip
    flow.client_conn.sni = sni
    await proxy.request(flow)
    assert (flow.request.headers["authorization"] == f"Bearer {fields['access_token']}") is joined
    if not joined:
        assert flow.response is not None and flow.response.status_code == 400


@pytest.mark.parametrize("log_joins", [True, False])
async def test_one_log_line_per_join_unless_turned_off(
    proxy: Proxy, caplog: pytest.LogCaptureFixture, log_joins: bool
) -> None:
    proxy.configure(splittoken_log_joins=log_joins)
    _, client = await login(proxy)
    handle = body_of(client)["access_token"]
    with caplog.at_level(logging.INFO, logger="splittoken"):
        assert await proxy.request(api_flow(f"Bearer {handle}"))
    lines = [r.getMessage() for r in caplog.records if "joined" in r.getMessage()]
    assert lines == ([f"joined handle {handle[:6]}…"] if log_joins else [])
    assert handle not in caplog.text


@pytest.mark.parametrize(
    "path", ["/realms/demo/.well-known/openid-configuration", "/realms/demo/protocol/openid-connect/certs"]
)
async def test_public_discovery_and_keys_pass_without_credentials(proxy: Proxy, path: str) -> None:
    flow = flow_for("GET", f"http://idp.example{path}", mode=REVERSE_IDP)
    assert await proxy.request(flow)


async def test_public_paths_still_join_a_presented_handle(proxy: Proxy) -> None:
    fields, client = await login(proxy)
    flow = api_flow(f"Bearer {body_of(client)['access_token']}", url="http://api.example/.well-known/x")
    assert await proxy.request(flow)
    assert flow.request.headers["authorization"] == f"Bearer {fields['access_token']}"


async def test_empty_public_filter_makes_every_route_require_credentials(proxy: Proxy) -> None:
    proxy.configure(splittoken_public_filter="")
    flow = flow_for("GET", "http://idp.example/.well-known/openid-configuration", mode=REVERSE_IDP)
    await assert_refused(proxy, flow, 401, None)


async def test_refusal_logs_never_show_the_query(proxy: Proxy, caplog: pytest.LogCaptureFixture) -> None:
    secret = "q" * 43
    flow = api_flow("Bearer unknown", url=f"http://api.example/items?access_token={secret}")
    with caplog.at_level(logging.INFO, logger="splittoken"):
        await assert_refused(proxy, flow, 401, "invalid_token")
    assert "/items" in caplog.text and secret not in caplog.text


@pytest.mark.parametrize("redact", [True, False])
async def test_api_responses_echoing_the_jwt_are_redacted_when_asked(proxy: Proxy, redact: bool) -> None:
    proxy.configure(splittoken_redact_api_responses=redact)
    fields, client = await login(proxy)
    handle = body_of(client)["access_token"]
    flow = api_flow(f"Bearer {handle}")
    assert await proxy.request(flow)
    jwt_ = fields["access_token"]
    echoed = http.Response.make(
        200, json.dumps({"you sent": f"Bearer {jwt_}"}), {"X-Debug": jwt_, "Content-Type": "application/json"}
    )
    answer = await proxy.respond(flow, echoed)
    assert (jwt_ in answer.text) is not redact
    assert (answer.headers["X-Debug"] == jwt_) is not redact
    if redact:
        assert body_of(answer) == {"you sent": f"Bearer {handle}"} and answer.headers["X-Debug"] == handle
