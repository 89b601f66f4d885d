"""The "Split Token" content view, driven the way mitmweb and mitmproxy drive it (prettify_message)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import jwt
import pytest
from mitmproxy import contentviews, http
from mitmproxy.test import taddons, tflow, tutils

from splittoken.state import META
from splittoken.view import SplitTokenView, describe_time

NOW = 1_700_000_000
CLAIMS = {
    "iss": "http://idp.test/realms/demo",
    "sub": "4f1c1ad5-alice",
    "exp": NOW + 252,
    "iat": NOW - 48,
    "email": "alice@example.com",
    "realm_access": {"roles": ["admin", "user"]},
    "tenant": "acme",
}
HEADER = {"alg": "HS256", "kid": "key-1", "typ": "JWT"}


def make_token(claims: dict | None = None) -> str:
    return jwt.encode(claims or CLAIMS, "a-test-secret-of-32-bytes-or-more", headers={"kid": "key-1"})


TOKEN = make_token()
SIGNATURE = TOKEN.rsplit(".", 1)[1]


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[contentviews.ContentviewRegistry]:
    """mitmproxy's views in a registry of the test's own (mitmproxy 12 cannot unregister a view), with ours
    registered the way mitmdump does it: by loading the addon."""
    fresh = contentviews.ContentviewRegistry()
    for view in contentviews.registry.values():
        fresh.register(view)
    monkeypatch.setattr(contentviews, "registry", fresh)
    addon = SplitTokenView()
    addon.view.clock = lambda: NOW
    with taddons.context(addon):
        yield fresh


def show(
    registry: contentviews.ContentviewRegistry,
    flow: http.HTTPFlow,
    message: http.Message,
    view: str = "auto",
) -> contentviews.ContentviewResult:
    result = contentviews.prettify_message(message, flow, view, registry=registry)
    assert SIGNATURE not in result.text, "a signature must never be shown"
    assert TOKEN not in result.text
    return result


def json_response(body: dict, status: int = 200) -> http.Response:
    return http.Response.make(status, json.dumps(body), {"Content-Type": "application/json"})


def api_request(authorization: str, content: bytes = b"") -> http.Request:
    headers = http.Headers(authorization=authorization)
    if content:
        headers["content-type"] = "application/json"
    return tutils.treq(path=b"/orders", headers=headers, content=content)


def split_flow() -> http.HTTPFlow:
    """A token response as the addon leaves it: the client's body holds the handle, metadata the rest."""
    flow = tflow.tflow(req=tutils.treq(method=b"POST", path=b"/realms/demo/protocol/openid-connect/token"))
    flow.response = json_response(
        {"access_token": SIGNATURE, "refresh_token": "R" * 43, "token_type": "Bearer", "expires_in": 300}
    )
    flow.metadata[META] = {
        "route": "token", "event": "split", "header": HEADER, "claims": CLAIMS, "handle": f"{SIGNATURE[:6]}…",
    }  # fmt: skip
    return flow


def test_split_token_response_shows_what_the_proxy_kept(registry: contentviews.ContentviewRegistry) -> None:
    flow = split_flow()
    result = show(registry, flow, flow.response)
    assert result.view_name == "Split Token"
    assert result.syntax_highlight == "yaml"
    text = result.text
    kept = text.split("kept back by the proxy:")[1]
    assert "alg: HS256" in kept
    assert "kid: key-1" in kept
    assert "email: alice@example.com" in kept
    assert "tenant: acme" in kept
    assert "- admin" in kept
    received = text.split("client received:")[1].split("kept back by the proxy:")[0]
    assert f"access_token: {SIGNATURE[:6]}… # the JWT's signature, {len(SIGNATURE)} characters" in received
    assert "refresh_token: RRRRRR… # a random handle, 43 characters" in received


def test_split_request_keeps_its_own_view(registry: contentviews.ContentviewRegistry) -> None:
    flow = split_flow()
    flow.request.headers["content-type"] = "application/x-www-form-urlencoded"
    flow.request.content = b"grant_type=password&username=alice&password=alice-pw"
    assert show(registry, flow, flow.request).view_name == "URL-encoded"


def test_joined_api_request_without_body(registry: contentviews.ContentviewRegistry) -> None:
    flow = tflow.tflow(req=api_request(f"Bearer {TOKEN}"))
    flow.metadata[META] = {"route": "api", "event": "joined", "handle": "abc123…", "subject": CLAIMS["sub"]}
    result = show(registry, flow, flow.request)
    assert result.view_name == "Split Token"
    story, forwarded = result.text.split("Authorization, forwarded upstream:")
    assert "event: joined" in story
    assert "handle: abc123…" in story
    assert f"subject: {CLAIMS['sub']}" in story
    assert "email: alice@example.com" in forwarded
    assert "alg: HS256" in forwarded


def test_joined_api_answer_keeps_its_own_view(registry: contentviews.ContentviewRegistry) -> None:
    flow = tflow.tflow(req=api_request(f"Bearer {TOKEN}"), resp=json_response({"orders": []}))
    flow.metadata[META] = {"route": "api", "event": "joined", "handle": "abc123…", "subject": "x"}
    assert show(registry, flow, flow.response).view_name == "JSON"


def test_refused_request_tells_why(registry: contentviews.ContentviewRegistry) -> None:
    flow = tflow.tflow(req=api_request("Bearer not-a-handle-we-know"), resp=json_response({}, 401))
    flow.metadata[META] = {
        "route": "api", "refused": "refused: unknown, expired or revoked handle", "answered": True,
    }  # fmt: skip
    text = show(registry, flow, flow.request).text
    assert "refused: unknown, expired or revoked handle" in text
    assert "answered by the proxy: 401" in text


def test_revoked_request(registry: contentviews.ContentviewRegistry) -> None:
    flow = tflow.tflow(req=tutils.treq(method=b"POST", path=b"/revoke", content=b"token=abc"))
    flow.metadata[META] = {"route": "revoke", "event": "revoked", "handle": "abc…", "revoked_kind": "refresh"}
    text = show(registry, flow, flow.request).text
    assert "event: revoked" in text
    assert "revoked_kind: refresh" in text


@pytest.mark.parametrize(
    ("body", "label"),
    [
        ({"data": {"session": TOKEN}}, "body:"),
        ({"id_token": TOKEN, "token_type": "Bearer"}, "id_token (body):"),
    ],
)
def test_jwt_in_a_plain_json_body(registry: contentviews.ContentviewRegistry, body: dict, label: str) -> None:
    flow = tflow.tflow(resp=json_response(body))
    result = show(registry, flow, flow.response)
    assert result.view_name == "Split Token"
    assert result.text.startswith(f"{label}\n")
    assert "email: alice@example.com" in result.text
    assert "split-token" not in result.text


def test_jwt_in_a_websocket_message(registry: contentviews.ContentviewRegistry) -> None:
    flow = tflow.twebsocketflow()
    message = flow.websocket.messages[0]
    message.content = json.dumps({"auth": TOKEN}).encode()
    assert show(registry, flow, message).view_name == "Split Token"


def test_body_without_jwt_is_left_alone(registry: contentviews.ContentviewRegistry) -> None:
    flow = tflow.tflow(resp=json_response({"hello": "world", "dotted": "a.b.c"}))
    assert show(registry, flow, flow.response).view_name == "JSON"
    metadata = contentviews.make_metadata(flow.response, flow)
    assert registry["split token"].render_priority(flow.response.content, metadata) == 0
    chosen = show(registry, flow, flow.response, "split token")
    assert chosen.syntax_highlight == "error"
    assert "no JWT here" in chosen.text


def test_look_alike_that_does_not_decode_is_left_alone(registry: contentviews.ContentviewRegistry) -> None:
    # Both first segments open a JSON object ("{") but are no JSON: find_jws flags it, inspect cannot read it.
    flow = tflow.tflow(resp=http.Response.make(200, b"eyJhYmM.eyJhYmM.c2ln", {"Content-Type": "text/plain"}))
    assert show(registry, flow, flow.response).view_name == "Raw"


def test_authorization_jwt_does_not_take_over_a_body(registry: contentviews.ContentviewRegistry) -> None:
    # Not the addon's flow (no metadata): the JSON body keeps its view; ours decodes the header on demand.
    flow = tflow.tflow(req=api_request(f"Bearer {TOKEN}", content=b'{"order": 1}'))
    assert show(registry, flow, flow.request).view_name == "JSON"
    chosen = show(registry, flow, flow.request, "split token")
    assert chosen.text.startswith("Authorization:\n")
    assert "email: alice@example.com" in chosen.text


def test_authorization_jwt_of_a_bodiless_request(registry: contentviews.ContentviewRegistry) -> None:
    flow = tflow.tflow(req=api_request(f"Bearer {TOKEN}"))
    assert show(registry, flow, flow.request).view_name == "Split Token"


def test_times_are_readable(registry: contentviews.ContentviewRegistry) -> None:
    claims = CLAIMS | {"exp": NOW - 3, "nbf": NOW + 3725, "auth_time": NOW - 90061}
    flow = tflow.tflow(req=api_request(f"Bearer {make_token(claims)}"))
    text = contentviews.prettify_message(flow.request, flow, registry=registry).text
    assert "exp: 1699999997 # 2023-11-14 22:13:17 UTC, expired 3s ago" in text
    assert "iat: 1699999952 # 2023-11-14 22:12:32 UTC, 48s ago" in text
    assert "nbf: 1700003725 # 2023-11-14 23:15:25 UTC, in 1h 2m" in text
    assert "auth_time: 1699909939 # 2023-11-13 21:12:19 UTC, 1d 1h ago" in text


@pytest.mark.parametrize(
    ("claim", "value", "expected"),
    [
        ("exp", NOW + 252, "2023-11-14 22:17:32 UTC, in 4m 12s"),
        ("exp", NOW, "2023-11-14 22:13:20 UTC, expired 0s ago"),
        ("exp", NOW - 7200.4, "2023-11-14 20:13:19 UTC, expired 2h ago"),
        ("iat", NOW - 59.6, "2023-11-14 22:12:20 UTC, 1m ago"),
        ("nbf", NOW + 86400 * 3 + 61, "2023-11-17 22:14:21 UTC, in 3d"),
        ("exp", "1700000000", None),
        ("exp", True, None),
        ("exp", 10**20, "not a valid time"),
    ],
)
def test_describe_time(claim: str, value: object, expected: str | None) -> None:
    assert describe_time(claim, value, NOW) == expected


def test_reload_replaces_the_view(registry: contentviews.ContentviewRegistry) -> None:
    # A hot reload loads a new addon instance: the view is replaced by name, never listed twice.
    before = len(registry)
    again = SplitTokenView()
    with taddons.context(again):
        assert len(registry) == before
        assert registry["split token"] is again.view
        assert registry.available_views().count("split token") == 1
