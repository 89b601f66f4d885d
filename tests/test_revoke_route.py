"""revoke_route.py: RFC 7009 revocation of handles."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from typing import Any

import pytest
from mitmproxy import http

from hooks import HookDriver as Proxy
from oauth_flows import (
    api_flow,
    assert_error,
    assert_refused,
    body_of,
    json_response,
    login,
    refresh_flow,
    refreshing,
    revoke_flow,
    store_down,
    token_fields,
)


@pytest.mark.parametrize("hint", [None, "access_token", "refresh_token"])
async def test_revoke_access_handle(proxy: Proxy, hint: str | None) -> None:
    fields, client = await login(proxy)
    handle = body_of(client)["access_token"]
    flow = revoke_flow(handle, hint)
    assert await proxy.request(flow)
    sent = dict(urllib.parse.parse_qsl(flow.request.get_text() or ""))
    assert sent["token"] == fields["access_token"]  # the IdP gets the whole JWT
    if hint:
        assert sent["token_type_hint"] == "access_token"
    answer = await proxy.respond(flow, http.Response.make(200, b""))
    assert answer.status_code == 200
    api = api_flow(f"Bearer {handle}")
    await assert_refused(proxy, api, 401, "invalid_token")
    assert proxy.addon.events.counts["revocations"] == 1


async def test_revoke_refresh_handle(proxy: Proxy) -> None:
    fields, client = await login(proxy)
    handle = body_of(client)["refresh_token"]
    flow = revoke_flow(handle, "refresh_token")
    assert await proxy.request(flow)
    sent = dict(urllib.parse.parse_qsl(flow.request.get_text() or ""))
    assert sent == {"token": fields["refresh_token"], "token_type_hint": "refresh_token", "client_id": "demo"}
    await proxy.respond(flow, http.Response.make(200, b""))
    again = refresh_flow(handle)
    await assert_refused(proxy, again, 400, "invalid_grant")


@pytest.mark.parametrize("hint", [None, "refresh_token", "access_token"])
async def test_revoking_a_rotated_handle_revokes_the_chains_current_refresh_token(
    proxy: Proxy, hint: str | None
) -> None:
    _, handle, flow = await refreshing(proxy)
    new = token_fields(refresh_token="new-" + "n" * 40)
    current = body_of(await proxy.respond(flow, json_response(new)))["refresh_token"]
    revoke = revoke_flow(handle, hint)
    assert await proxy.request(revoke)  # to the authorization server, with the token the chain holds now
    sent = dict(urllib.parse.parse_qsl(revoke.request.get_text() or ""))
    assert sent["token"] == new["refresh_token"]
    if hint:
        assert sent["token_type_hint"] == "refresh_token"
    assert (await proxy.respond(revoke, http.Response.make(200, b""))).status_code == 200
    late = refresh_flow(handle)
    await assert_refused(proxy, late, 400, "invalid_grant")
    await assert_refused(proxy, refresh_flow(current), 400, "invalid_grant")


async def test_revoking_a_handle_revokes_the_whole_chain_after_it(proxy: Proxy) -> None:
    _, first, flow = await refreshing(proxy)
    second = body_of(await proxy.respond(flow, json_response(token_fields(refresh_token="r2-" + "2" * 40))))
    flow = refresh_flow(second["refresh_token"])
    assert await proxy.request(flow)
    third = token_fields(refresh_token="r3-" + "3" * 40)
    current = body_of(await proxy.respond(flow, json_response(third)))["refresh_token"]
    revoke = revoke_flow(first)
    assert await proxy.request(revoke)
    assert dict(urllib.parse.parse_qsl(revoke.request.get_text() or ""))["token"] == third["refresh_token"]
    await proxy.respond(revoke, http.Response.make(200, b""))
    for handle in (first, second["refresh_token"], current):
        await assert_refused(proxy, refresh_flow(handle), 400, "invalid_grant")


async def test_revoking_the_current_handle_ends_the_grace_replay(proxy: Proxy) -> None:
    _, handle, flow = await refreshing(proxy)
    new = token_fields(refresh_token="new-" + "n" * 40)
    current = body_of(await proxy.respond(flow, json_response(new)))["refresh_token"]
    revoke = revoke_flow(current)
    assert await proxy.request(revoke)
    assert dict(urllib.parse.parse_qsl(revoke.request.get_text() or ""))["token"] == new["refresh_token"]
    await proxy.respond(revoke, http.Response.make(200, b""))
    late = refresh_flow(handle)
    body = await assert_refused(proxy, late, 400, "invalid_grant")  # no replay of a logged-out chain
    assert "access_token" not in body


async def test_revoking_a_rotated_handle_of_an_ended_chain_is_answered_locally(proxy: Proxy) -> None:
    _, handle, flow = await refreshing(proxy)
    current = body_of(await proxy.respond(flow, json_response(token_fields(refresh_token="n" * 40))))
    assert proxy.addon.vault
    proxy.addon.vault.forget_now(current["refresh_token"])
    revoke = revoke_flow(handle)
    assert not await proxy.request(revoke)  # nothing left to revoke upstream
    assert revoke.response is not None
    assert revoke.response.status_code == 200
    await assert_refused(proxy, refresh_flow(handle), 400, "invalid_grant")


async def test_a_revocation_during_a_refresh_wins(proxy: Proxy) -> None:
    _, handle, refresh = await refreshing(proxy)
    revoke = revoke_flow(handle)
    revoking = asyncio.create_task(proxy.request(revoke))
    await asyncio.sleep(0.01)
    assert not revoking.done()  # it waits for the refresh in flight, to revoke what that brings
    new = token_fields(refresh_token="new-" + "n" * 40)
    answer = await proxy.respond(refresh, json_response(new))
    assert_error(answer, 400, "invalid_grant")  # the new handles are not handed out
    assert await revoking
    assert dict(urllib.parse.parse_qsl(revoke.request.get_text() or ""))["token"] == new["refresh_token"]
    await assert_refused(proxy, refresh_flow(handle), 400, "invalid_grant")


@pytest.mark.parametrize("grace", [0, 10])
async def test_a_revocation_landing_as_a_refresh_hands_out_its_answer_ends_that_answer_too(
    proxy: Proxy, monkeypatch: Any, grace: int
) -> None:
    # The refresh has seen its handle alive and is storing the answer's records when the revocation lands.
    proxy.configure(splittoken_refresh_grace=grace)
    _, handle, refresh = await refreshing(proxy)
    vault = proxy.addon.vault
    assert vault
    keep, revoke = vault.keep, revoke_flow(handle)
    revoking: list[asyncio.Task[bool]] = []

    async def keep_while_revoking(*args: Any) -> None:
        if not revoking:
            revoking.append(asyncio.create_task(proxy.request(revoke)))
            await asyncio.sleep(0.01)
        await keep(*args)

    monkeypatch.setattr(vault, "keep", keep_while_revoking)
    new = token_fields(refresh_token="new-" + "n" * 40)
    answer = await proxy.respond(refresh, json_response(new))
    assert answer.status_code == 200
    assert await revoking[0]
    assert dict(urllib.parse.parse_qsl(revoke.request.get_text() or ""))["token"] == new["refresh_token"]
    for dead in (handle, body_of(answer)["refresh_token"]):
        await assert_refused(proxy, refresh_flow(dead), 400, "invalid_grant")


@pytest.mark.parametrize(("kind", "status"), [("access_token", 200), ("refresh_token", 400)])
async def test_unsupported_token_type_becomes_200_only_for_access_handles(
    proxy: Proxy, kind: str, status: int
) -> None:
    """Only the proxy ever held the access JWT, so for the client it is revoked; a refresh token is not."""
    _, client = await login(proxy)
    flow = revoke_flow(body_of(client)[kind])
    assert await proxy.request(flow)
    raw = b'{"error":"unsupported_token_type","error_description":"no"}'
    answer = await proxy.respond(flow, json_response(None, status=400, raw=raw))
    assert answer.status_code == status
    if status == 200:
        assert answer.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("token", ["A" * 43, "opaque-token-from-idp", "a.b.c", ""])
async def test_revoke_of_unknown_token_passes_unchanged(proxy: Proxy, token: str) -> None:
    flow = revoke_flow(token, "access_token")
    before = flow.request.content
    assert await proxy.request(flow)
    assert flow.request.content == before


async def test_revoked_access_token_is_not_sent_to_another_host(proxy: Proxy) -> None:
    # Same as refresh: a revocation to any host's .../revoke gets the whole JWT joined into its body.
    fields, client = await login(proxy)
    flow = revoke_flow(body_of(client)["access_token"], url="http://evil.example/revoke")
    await proxy.request(flow)
    assert fields["access_token"] not in (flow.request.get_text() or "")


async def test_store_failure_on_revoke_is_503(proxy: Proxy, monkeypatch: Any) -> None:
    _, client = await login(proxy)
    assert proxy.addon.vault
    monkeypatch.setattr(proxy.addon.vault.store, "delete", store_down)
    flow = revoke_flow(body_of(client)["access_token"])
    assert await proxy.request(flow)
    # Accepted by the authorization server, not forgotten here: the client must hear it, and try again.
    assert_error(await proxy.respond(flow, http.Response.make(200, b"")), 503, "temporarily_unavailable")


async def test_a_revocation_the_authorization_server_refuses_forgets_nothing(proxy: Proxy) -> None:
    """RFC 7009 §2.1: the server authenticates the client first. A thief's revocation with a wrong secret
    (401 invalid_client) must not log the handle's owner out."""
    _, client = await login(proxy)
    for kind in ("access_token", "refresh_token"):
        flow = revoke_flow(body_of(client)[kind])
        assert await proxy.request(flow)
        refused = json_response(None, status=401, raw=b'{"error":"invalid_client","error_description":"no"}')
        assert_error(await proxy.respond(flow, refused), 401, "invalid_client")
    assert await proxy.request(api_flow(f"Bearer {body_of(client)['access_token']}"))
    assert await proxy.request(refresh_flow(body_of(client)["refresh_token"]))
    assert proxy.addon.events.counts["revocations"] == 0


# -----------------------------------------------------------------------------------------------------------
# What the proxy swapped in never comes back


def json_escaped(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


def percent_encoded(text: str) -> str:
    return "".join(f"%{b:02X}" for b in text.encode())


@pytest.mark.parametrize("status", [200, 400])
@pytest.mark.parametrize("kind", ["access_token", "refresh_token"])
async def test_a_revocation_answer_quoting_the_token_shows_the_handle(
    proxy: Proxy, kind: str, status: int
) -> None:
    fields, client = await login(proxy)
    handle = body_of(client)[kind]
    revoke = revoke_flow(handle)
    assert await proxy.request(revoke)
    raw = json.dumps(
        {"error": "invalid_request", "error_description": f"cannot revoke {fields[kind]}"}
    ).encode()
    answer = await proxy.respond(revoke, json_response(None, status=status, raw=raw))
    assert answer.status_code == status
    assert body_of(answer)["error_description"] == f"cannot revoke {handle}"


@pytest.mark.parametrize(
    "quote",
    [
        lambda t: (f'{{"revoked": "{json_escaped(t)}"}}', {}),
        lambda t: (f'{{"revoked": "{percent_encoded(t)}"}}', {}),
        lambda t: ("{}", {"X-Debug": f"token={t}"}),
        lambda t: ("{}", {"X-Debug": f"token={percent_encoded(t)}"}),
    ],
    ids=["JSON-escaped", "percent-encoded", "in a header", "percent-encoded in a header"],
)
@pytest.mark.parametrize("kind", ["access_token", "refresh_token"])
async def test_a_revocation_answer_quoting_the_token_otherwise_is_refused(
    proxy: Proxy, kind: str, quote: Any
) -> None:
    fields, client = await login(proxy)
    revoke = revoke_flow(body_of(client)[kind])
    assert await proxy.request(revoke)
    raw, headers = quote(fields[kind])
    answer = await proxy.respond(revoke, json_response(None, raw=raw.encode(), headers=headers))
    assert_error(answer, 502, "server_error")


async def test_a_revocation_answer_of_a_token_not_ours_passes_unchanged(proxy: Proxy) -> None:
    revoke = revoke_flow("opaque-token-from-idp")
    assert await proxy.request(revoke)
    raw = b'{"error": "invalid_request", "error_description": "opaque-token-from-idp"}'
    answer = await proxy.respond(revoke, json_response(None, status=400, raw=raw))
    assert answer.raw_content == raw
