"""api_route.py: handles re-joined into JWTs on API routes, and everything refused there."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from mitmproxy import http

from hooks import HookDriver as Proxy
from hooks import awaited, flow_for
from oauth_flows import (
    API,
    REVERSE_API,
    REVERSE_IDP,
    api_flow,
    assert_error,
    assert_refused,
    body_of,
    joined,
    login,
    make_jwt,
    store_down,
)
from splittoken import api_route, leaks


async def test_api_join_bearer_and_bare(proxy: Proxy) -> None:
    fields, client = await login(proxy)
    handle = body_of(client)["access_token"]
    for value in (f"Bearer {handle}", f"bearer {handle}", handle):
        flow = api_flow(value)
        assert await proxy.request(flow)
        assert flow.request.headers.get_all("Authorization") == [f"Bearer {fields['access_token']}"]
        assert flow.comment.startswith("split-token: re-joined")
        assert fields["access_token"] not in flow.comment
    assert proxy.addon.events.counts["joins"] == 3


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
    [["Basic YWxpY2U6cHc="], ["Bearer a", "Bearer b"], [""], ["Bearer a+b/c="]],
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


# ---------------------------------------------------------------------------------------------------------
# Echoes of the JWT in the API's answers (issue 10, property 8)


def json_escaped(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


def percent_encoded(text: str) -> str:
    return "".join(f"%{ord(c):02X}" for c in text)


def mixed(text: str) -> str:
    """Each character spelled another way: as is, \\u00HH, %hh, and \\u0025hh (a JSON-escaped "%")."""
    forms = (str, lambda c: f"\\u{ord(c):04X}", lambda c: f"%{ord(c):02x}", lambda c: f"\\u0025{ord(c):02x}")
    return "".join(forms[i % 4](c) for i, c in enumerate(text))


SPELLINGS = {"as is": str, "JSON-escaped": json_escaped, "percent-encoded": percent_encoded, "mixed": mixed}


def assert_unreadable(raw: bytes, token: str) -> None:
    """Neither the token nor its claims segment in ``raw``, however a client reads it."""
    claims = token.split(".")[1]
    assert not any(claims in reading for reading in leaks.readings(raw)), "the client can read the JWT"


@pytest.mark.parametrize("spell", SPELLINGS.values(), ids=SPELLINGS.keys())
@pytest.mark.parametrize("status", [200, 401])
async def test_api_answers_quoting_the_jwt_get_the_handle_by_default(
    proxy: Proxy, spell: Any, status: int
) -> None:
    """With no option set, the JWT, its signing input or its claims segment, in any spelling, in a header, a
    trailer or the body, reach the client as the handle."""
    token, handle, flow = await joined(proxy)
    signing_input, claims = token.rpartition(".")[0], token.split(".")[1]
    body = json.dumps({"you sent": "TOKEN", "unsigned": "INPUT", "claims": "CLAIMS", "other": "kept"})
    body = body.replace("TOKEN", spell(token)).replace("INPUT", spell(signing_input))
    body = body.replace("CLAIMS", spell(claims))
    upstream = http.Response.make(status, body, {"X-Debug": f"token={spell(token)}", "X-Other": "kept"})
    upstream.trailers = http.Headers(x_echo=spell(token))
    answer = await proxy.respond(flow, upstream)
    assert json.loads(answer.content or b"") == {
        "you sent": handle, "unsigned": handle, "claims": handle, "other": "kept",
    }  # fmt: skip
    assert answer.headers["X-Debug"] == f"token={handle}" and answer.headers["X-Other"] == "kept"
    assert answer.trailers and answer.trailers["x-echo"] == handle
    assert int(answer.headers["content-length"]) == len(answer.content or b"")
    assert_unreadable(answer.content or b"", token)


async def test_api_answers_without_the_jwt_are_left_as_they_are(proxy: Proxy) -> None:
    _, _, flow = await joined(proxy)
    raw = json.dumps({"items": ["é" * 50, "%41 \\u0041"] * 100}).encode()
    upstream = http.Response.make(200, raw, {"Content-Type": "application/json"})
    answer = await proxy.respond(flow, upstream)
    assert answer.raw_content is raw  # not even copied


async def test_compressed_api_answers_are_read_decoded(proxy: Proxy) -> None:
    token, handle, flow = await joined(proxy)
    upstream = http.Response.make(200, json.dumps({"echo": token}))
    upstream.encode("gzip")
    answer = await proxy.respond(flow, upstream)
    assert answer.headers["content-encoding"] == "gzip"
    assert json.loads(answer.get_content() or b"") == {"echo": handle}


async def test_api_answers_quoting_the_jwt_beyond_rewriting_are_refused(proxy: Proxy) -> None:
    """UTF-16, which a JSON parser detects: no byte replacement reaches it, so the answer is refused."""
    token, _, flow = await joined(proxy)
    upstream = http.Response.make(200, json.dumps({"echo": token}).encode("utf-16"))
    answer = await proxy.respond(flow, upstream)
    assert_error(answer, 502, "server_error")
    assert token.split(".")[1] not in answer.text


def stream_through(flow: http.HTTPFlow, body: bytes, size: int) -> bytes:
    """What mitmproxy sends the client of a streamed body, ``size`` bytes at a time."""
    stream = flow.response.stream if flow.response else None
    assert callable(stream), "the streamed answer is not scanned"
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    sent = [piece for chunk in [*chunks, b""] for piece in stream(chunk)]
    assert all(sent), "an empty chunk would end a chunked body early"
    return b"".join(sent)


def echoed_body(token: str) -> bytes:
    """Larger than any tail the scanner holds back, with the token in several spellings and places."""
    parts = ["a" * 9000, token, "b" * 9000, json_escaped(token), percent_encoded(token), mixed(token), "end"]
    return " ".join(parts).encode()


@pytest.mark.parametrize("size", [13, 4096, 65536])
async def test_streamed_api_answers_are_scanned_chunk_by_chunk(proxy: Proxy, size: int) -> None:
    token, handle, flow = await joined(proxy)
    body = echoed_body(token)
    upstream = http.Response.make(200, b"", {"Content-Length": str(len(body))})
    upstream.stream = True  # what mitmproxy sets for a body over stream_large_bodies
    flow.response = upstream
    proxy.addon.responseheaders(flow)
    # The length changes; chunked, so that a body cut short shows as such.
    assert "content-length" not in upstream.headers and upstream.headers["transfer-encoding"] == "chunked"
    sent = stream_through(flow, body, size)
    assert sent == " ".join(["a" * 9000, handle, "b" * 9000, handle, handle, handle, "end"]).encode()
    await awaited(proxy.addon.response(flow))
    assert flow.error is None and flow.live


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
async def test_compressed_streamed_answers_are_decoded_as_they_stream(proxy: Proxy, coding: str) -> None:
    """Compressed bytes cannot be searched: they are decoded chunk by chunk, and go on decoded."""
    token, handle, flow = await joined(proxy)
    body = echoed_body(token)
    upstream = http.Response.make(200, body)
    upstream.encode(coding)
    compressed = upstream.raw_content or b""
    upstream.stream = True
    flow.response = upstream
    proxy.addon.responseheaders(flow)
    assert "content-encoding" not in upstream.headers
    sent = stream_through(flow, compressed, 1000)
    assert sent == " ".join(["a" * 9000, handle, "b" * 9000, handle, handle, handle, "end"]).encode()


async def test_streamed_answers_in_an_unknown_coding_are_closed(proxy: Proxy) -> None:
    _, _, flow = await joined(proxy)
    upstream = http.Response.make(200, b"")
    upstream.headers["Content-Encoding"] = "compress"
    upstream.stream = True
    flow.response = upstream
    proxy.addon.responseheaders(flow)
    assert flow.error is not None and not flow.live


async def test_streamed_answers_quoting_the_jwt_beyond_rewriting_are_cut_short(proxy: Proxy) -> None:
    token, _, flow = await joined(proxy)
    body = json.dumps({"pad": "x" * 20000, "echo": token, "more": "y" * 20000}).encode("utf-16")
    upstream = http.Response.make(200, b"")
    upstream.stream = True
    flow.response = upstream
    proxy.addon.responseheaders(flow)
    sent = stream_through(flow, body, 4096)
    assert len(sent) < len(body)
    assert token.split(".")[1].encode("utf-16-le") not in sent
    await awaited(proxy.addon.response(flow))
    assert flow.error is not None and not flow.live  # killed: the client sees the answer cut short


async def test_answers_of_unknown_length_are_scanned_from_the_first_byte(proxy: Proxy) -> None:
    """mitmproxy buffers a body of unknown length until it outgrows stream_large_bodies, then streams the rest
    with no hook in between: with the option set, such an answer is scanned as a stream from the start."""
    proxy.tctx.options.add_option("stream_large_bodies", str | None, None, "proxyserver's option")
    proxy.configure(stream_large_bodies="1m")
    token, handle, flow = await joined(proxy)
    upstream = http.Response.make(200, b"", {"Transfer-Encoding": "chunked"})
    flow.response = upstream
    proxy.addon.responseheaders(flow)
    assert stream_through(flow, echoed_body(token), 8192).count(handle.encode()) == 4
    sized = api_flow(f"Bearer {handle}")
    assert await proxy.request(sized)
    sized.response = http.Response.make(200, b"{}")  # Content-Length within the limit: never streamed
    proxy.addon.responseheaders(sized)
    assert sized.response.stream is False


# ---------------------------------------------------------------------------------------------------------
# What passes without a handle (issue 10, property 8)


PUBLIC_LOOKALIKES = {
    "well-known under an API path": "/api/.well-known/x",
    "keys under an API path": "/api/keys",
    "certs under an API path": "/api/v1/certs",
    "jwks under an API path": "/api/v1/jwks",
    "dot segments out of a well-known path": "/realms/demo/.well-known/../../../api/secret",
    "encoded dot segments": "/realms/demo/.well-known/%2e%2e/%2E%2E/%2e%2e/api/secret",
    "well-known then dot-dot": "/api/secret/.well-known/..",
    "well-known in a fragment": "/api/secret#/.well-known/openid-configuration",
    "keys in a path parameter": "/api/secret;/keys",
    "discovery in the query": "/api/secret?/.well-known/openid-configuration",
}


@pytest.mark.parametrize("target", PUBLIC_LOOKALIKES.values(), ids=PUBLIC_LOOKALIKES.keys())
async def test_api_paths_looking_public_need_a_handle(proxy: Proxy, target: str) -> None:
    flow = flow_for("GET", API, mode=REVERSE_API)
    flow.request.path = target  # spelled exactly, as a client can send it
    await assert_refused(proxy, flow, 401, None)


@pytest.mark.parametrize(
    ("method", "url", "host"),
    [
        ("GET", "http://api.example/api/secret", "api.example/.well-known/openid-configuration?"),
        ("POST", "http://idp.example/realms/demo/protocol/openid-connect/token", "a?b"),
        ("POST", "http://idp.example/realms/demo/protocol/openid-connect/token", "idp.example?:443"),
        ("GET", "http://api.example/api/secret", "user@api.example"),
    ],
)
async def test_a_host_header_that_is_no_authority_is_refused(
    proxy: Proxy, method: str, url: str, host: str
) -> None:
    """Filters read the Host header as part of the URL (mitmproxy's pretty_url): with keep_host_header, a "?"
    in it hid the token path from the token filter, a path made any path look public. Refused first."""
    flow = flow_for(method, url, mode=REVERSE_API)
    flow.request.headers["Host"] = host
    await assert_refused(proxy, flow, 400, "invalid_request")


PUBLIC_PATHS = {
    "Keycloak discovery": "/realms/demo/.well-known/openid-configuration",
    "Keycloak RFC 8414 metadata": "/realms/demo/.well-known/oauth-authorization-server",
    "Keycloak key set": "/realms/demo/protocol/openid-connect/certs",
    "Keycloak key set, legacy /auth": "/auth/realms/demo/protocol/openid-connect/certs",
    "Keycloak authorization": "/realms/demo/protocol/openid-connect/auth?client_id=spa&response_type=code",
    "Keycloak logout": "/realms/demo/protocol/openid-connect/logout",
    "Okta key set": "/oauth2/default/v1/keys",
    "Okta org key set": "/oauth2/v1/keys",
    "Okta authorization": "/oauth2/default/v1/authorize?client_id=x",
    "Entra key set": "/common/discovery/v2.0/keys",
    "Entra v1 key set": "/contoso.onmicrosoft.com/discovery/keys",
    "Entra authorization": "/common/oauth2/v2.0/authorize?client_id=x",
    "Google key set": "/oauth2/v3/certs",
    "Google authorization": "/o/oauth2/v2/auth?client_id=x",
    "Auth0 key set": "/.well-known/jwks.json",
    "Cognito key set": "/eu-west-1_AbCdEf/.well-known/jwks.json",
    "Auth0 authorization": "/authorize?client_id=x",
    "oidc-provider key set": "/jwks",
    "oidc-provider authorization": "/auth?client_id=x",
    "RFC 8414 metadata of an issuer with a path": "/.well-known/oauth-authorization-server/tenant/a",
    "RFC 9728 resource metadata": "/.well-known/oauth-protected-resource",
    "trailing slash": "/realms/demo/protocol/openid-connect/certs/",
}


@pytest.mark.parametrize("path", PUBLIC_PATHS.values(), ids=PUBLIC_PATHS.keys())
async def test_discovery_key_sets_and_authorization_pages_pass_without_a_handle(
    proxy: Proxy, path: str
) -> None:
    flow = flow_for("GET", "http://idp.example/", mode=REVERSE_IDP)
    flow.request.path = path
    assert await proxy.request(flow)
    assert flow.request.path == path  # judged on the normalised path, sent as the client wrote it


# ---------------------------------------------------------------------------------------------------------
# Tokens out of the front channel: the implicit grant and hybrid flows

AUTHORIZE = "http://idp.example/realms/demo/protocol/openid-connect/auth?client_id=spa&state=s"
CALLBACK = "https://app.example/cb"


async def authorization_answer(proxy: Proxy, answer: http.Response, warm: bool) -> http.Response:
    """An authorization request, a public page, through a proxy that has seen the token endpoint beside it
    (``warm``: its answers are judged as the authorization server's) or none yet."""
    if warm:
        await login(proxy)
    flow = flow_for("GET", AUTHORIZE, mode=REVERSE_IDP)
    assert await proxy.request(flow)
    return await proxy.respond(flow, answer)


def redirect(location: str) -> http.Response:
    return http.Response.make(302, b"", {"Location": location})


def form_post(**fields: str) -> http.Response:
    inputs = "".join(f'<input type="hidden" name="{k}" value="{v}"/>' for k, v in fields.items())
    page = f'<form method="post" action="{CALLBACK}">{inputs}</form>'
    return http.Response.make(200, page.encode(), {"Content-Type": "text/html"})


@pytest.mark.parametrize(
    "answer",
    [
        lambda jwt: redirect(f"{CALLBACK}#access_token={jwt}&token_type=Bearer&state=s"),  # implicit
        lambda jwt: redirect(f"{CALLBACK}?code=c&access_token={jwt}&state=s"),  # response_mode=query
        lambda jwt: redirect(f"{CALLBACK}#access_token={jwt.replace('.', '%2E')}"),  # dots encoded
        lambda jwt: redirect(f"{CALLBACK}#code=c&id_token={make_jwt()}&access_token={jwt}"),  # hybrid
        lambda jwt: redirect(f"{CALLBACK}#response={jwt}"),  # JARM: claims a client can read
        lambda jwt: form_post(access_token=jwt, state="s"),  # response_mode=form_post
        lambda jwt: http.Response.make(200, f"<script>post({{access_token:'{jwt}'}})</script>".encode()),
    ],
    ids=["fragment", "query", "encoded dots", "hybrid", "JARM", "form_post", "web_message"],
)
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
async def test_an_authorization_response_carrying_a_token_is_refused(
    proxy: Proxy, answer: Any, warm: bool
) -> None:
    """The implicit grant hands the access token to the browser from the authorization endpoint, a page the
    public filter lets through: only token endpoint answers are split, so such an answer is refused, in
    every response mode, even before the proxy has seen the token endpoint. Without the check the JWT
    reaches the client."""
    token = make_jwt(sub="bob", email="bob@example.com")
    response = await authorization_answer(proxy, answer(token), warm)
    assert_error(response, 502, "server_error")
    assert token not in (response.headers.get("location", "") + (response.get_text() or ""))


@pytest.mark.parametrize(
    "answer",
    [
        lambda: redirect(f"{CALLBACK}?code=c&state=s"),  # the code flow
        lambda: redirect(f"{CALLBACK}#code=c&id_token={make_jwt()}&state=s"),  # OIDC hybrid, code id_token
        lambda: form_post(code="c", id_token=make_jwt(), state="s"),  # form_post of an id_token
        lambda: http.Response.make(200, b"<html>sign in to see your access_token settings</html>"),
    ],
    ids=["code", "id_token in the fragment", "id_token form_post", "login page"],
)
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
async def test_authorization_responses_without_a_token_pass(proxy: Proxy, answer: Any, warm: bool) -> None:
    response = await authorization_answer(proxy, answer(), warm)
    assert response.status_code in (200, 302)
    assert not response.headers.get("content-type", "").startswith("application/json")
