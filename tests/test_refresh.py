"""refresh.py: refresh grants, rotation, grace replays and shared flights."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.parse
from typing import Any

import pytest
from mitmproxy import http

from hooks import HookDriver as Proxy
from oauth_flows import (
    IDP,
    assert_error,
    assert_refused,
    body_of,
    is_handle,
    json_response,
    login,
    make_jwt,
    refresh_flow,
    refreshing,
    sig,
    store_down,
    token_fields,
    token_flow,
)
from splittoken import policy
from splittoken.seal import Record


async def test_refresh_form_swaps_handle_for_real_token_and_rotates(proxy: Proxy, monkeypatch: Any) -> None:
    fields, client = await login(proxy)
    first = body_of(client)
    handle = first["refresh_token"]

    flow = refresh_flow(handle)
    assert await proxy.request(flow)
    sent = dict(urllib.parse.parse_qsl(flow.request.get_text() or ""))
    assert sent == {
        "grant_type": "refresh_token",
        "refresh_token": fields["refresh_token"],
        "client_id": "demo",
    }
    rotated = token_fields(refresh_token="rotated-" + "z" * 40)
    answer = await proxy.respond(flow, json_response(rotated))
    second = body_of(answer)
    assert second["access_token"] == sig(rotated["access_token"])
    assert is_handle(second["refresh_token"])
    assert second["refresh_token"] not in (handle, rotated["refresh_token"])
    assert proxy.addon.events.counts["refreshes"] == 1

    # Within the grace period the old handle replays the same answer, without going upstream.
    late = refresh_flow(handle)
    assert not await proxy.request(late)
    assert late.response is not None
    assert late.response.status_code == 200
    assert body_of(late.response) == second
    assert late.response.headers["Cache-Control"] == "no-store"

    # The new refresh handle works and carries the rotated token upstream.
    flow = refresh_flow(second["refresh_token"])
    assert await proxy.request(flow)
    assert (
        dict(urllib.parse.parse_qsl(flow.request.get_text() or ""))["refresh_token"]
        == rotated["refresh_token"]
    )

    # After the grace period the old handle is refused.
    assert proxy.addon.vault
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 11)
    proxy.addon.vault.clock = time.time
    after = refresh_flow(handle)
    await assert_refused(proxy, after, 400, "invalid_grant")


async def test_refresh_json_request_body(proxy: Proxy) -> None:
    fields, client = await login(proxy)
    flow = refresh_flow(body_of(client)["refresh_token"], json_body=True)
    assert await proxy.request(flow)
    sent = json.loads(flow.request.content or b"")
    assert sent["refresh_token"] == fields["refresh_token"]
    assert sent["grant_type"] == "refresh_token"
    assert sent["client_id"] == "demo"


async def test_refresh_without_rotation_keeps_the_handle(proxy: Proxy) -> None:
    fields, handle, flow = await refreshing(proxy)
    again = token_fields(refresh_token=fields["refresh_token"])
    answer = await proxy.respond(flow, json_response(again))
    assert body_of(answer)["refresh_token"] == handle
    assert body_of(answer)["access_token"] == sig(again["access_token"])
    flow = refresh_flow(handle)
    assert await proxy.request(flow)  # still a live refresh handle, not a replay


async def test_refresh_without_rotation_and_opaque_access_token_keeps_the_refresh_token_hidden(
    proxy: Proxy,
) -> None:
    # Opaque (or JWE) access tokens and a provider that does not rotate refresh tokens: the answer to a
    # refresh has no record to store, and "nothing to store" means "pass the response unchanged", real
    # refresh token included.
    real = "real-refresh-" + "q" * 40
    _, client = await login(
        proxy, {"access_token": "opaque-1", "refresh_token": real, "token_type": "Bearer"}
    )
    handle = body_of(client)["refresh_token"]
    assert is_handle(handle)
    flow = refresh_flow(handle)
    assert await proxy.request(flow)
    answer = await proxy.respond(flow, json_response({"access_token": "opaque-2", "refresh_token": real}))
    assert real.encode() not in (answer.raw_content or b"")
    assert body_of(answer)["refresh_token"] == handle
    assert body_of(answer)["access_token"] == "opaque-2"


async def test_refresh_with_grace_zero_forgets_the_old_handle(proxy: Proxy) -> None:
    proxy.configure(splittoken_refresh_grace=0)
    _, handle, flow = await refreshing(proxy)
    await proxy.respond(flow, json_response(token_fields(refresh_token="new-" + "n" * 40)))
    late = refresh_flow(handle)
    await assert_refused(proxy, late, 400, "invalid_grant")


@pytest.mark.parametrize(
    "presented",
    ["A" * 43, "not a handle", "x.y.z", "", "ü", "A" * 5000],
    ids=["unknown", "sp", "dots", "empty", "u", "long"],
)
async def test_unknown_refresh_handle_is_refused_without_upstream(proxy: Proxy, presented: str) -> None:
    await login(proxy)
    flow = refresh_flow(presented)
    await assert_refused(proxy, flow, 400, "invalid_grant")
    assert "WWW-Authenticate" not in flow.response.headers


async def test_jwt_or_access_handle_as_refresh_token_is_refused(proxy: Proxy) -> None:
    fields, client = await login(proxy)
    for presented in (fields["access_token"], body_of(client)["access_token"], fields["refresh_token"]):
        flow = refresh_flow(presented)
        await assert_refused(proxy, flow, 400, "invalid_grant")


async def test_invalid_grant_from_idp_forgets_the_handle(proxy: Proxy) -> None:
    _, handle, flow = await refreshing(proxy)
    raw = b'{"error":"invalid_grant","error_description":"Token is not active"}'
    answer = await proxy.respond(flow, json_response(None, status=400, raw=raw))
    assert answer.status_code == 400
    assert answer.raw_content == raw
    flow = refresh_flow(handle)
    await assert_refused(proxy, flow, 400, "invalid_grant")


async def test_other_refresh_errors_keep_the_handle(proxy: Proxy) -> None:
    _, handle, flow = await refreshing(proxy)
    await proxy.respond(flow, json_response(None, status=503, raw=b'{"error":"temporarily_unavailable"}'))
    assert await proxy.request(refresh_flow(handle))


async def test_concurrent_refreshes_share_one_upstream_call(proxy: Proxy) -> None:
    _, handle, first = await refreshing(proxy)
    second = refresh_flow(handle)
    waiting = asyncio.create_task(proxy.request(second))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    answer = await proxy.respond(first, json_response(token_fields(refresh_token="new-" + "n" * 40)))
    assert not await waiting
    assert second.response is not None
    assert body_of(second.response) == body_of(answer)


async def test_upstream_error_releases_waiting_refreshes(proxy: Proxy) -> None:
    _, handle, first = await refreshing(proxy)
    second = refresh_flow(handle)
    waiting = asyncio.create_task(proxy.request(second))
    await asyncio.sleep(0.01)
    proxy.addon.error(first)
    assert not await waiting
    assert second.response is not None
    assert second.response.status_code == 502


async def test_refresh_handle_is_not_sent_to_another_authorization_server(proxy: Proxy) -> None:
    # The default token filter matches any host's .../token. In regular (forward) proxy mode a client - or a
    # script that stole a refresh handle - sends it to a token endpoint of its choosing, and the proxy swaps
    # in the real refresh token on the way there.
    fields, client = await login(proxy)
    flow = refresh_flow(body_of(client)["refresh_token"], url="http://evil.example/token")
    await proxy.request(flow)
    assert fields["refresh_token"] not in (flow.request.get_text() or "")


async def test_store_failure_on_refresh_is_503_without_upstream(proxy: Proxy, monkeypatch: Any) -> None:
    fields, client = await login(proxy)
    assert proxy.addon.vault
    monkeypatch.setattr(proxy.addon.vault.store, "get", store_down)
    flow = refresh_flow(body_of(client)["refresh_token"])
    await assert_refused(proxy, flow, 503, "temporarily_unavailable")
    assert fields["refresh_token"] not in (flow.request.get_text() or "")


async def test_an_empty_refresh_token_in_a_refresh_answer_keeps_the_handle(proxy: Proxy) -> None:
    fields, handle, flow = await refreshing(proxy)
    answer = await proxy.respond(flow, json_response(token_fields(refresh_token="")))
    assert answer.status_code == 200
    again = refresh_flow(handle)
    assert await proxy.request(again)  # still a live refresh handle, not a retired one
    assert fields["refresh_token"] in (again.request.get_text() or "")


# -----------------------------------------------------------------------------------------------------------
# Replays and shared refreshes keep client authentication

OWNER = {"client_id": "demo", "client_secret": "s3cret"}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def refresh_as(handle: str, authorization: str = "", **client: str) -> http.HTTPFlow:
    """A refresh grant authenticated with ``client`` (form fields) and an ``authorization`` header."""
    form = {"grant_type": "refresh_token", "refresh_token": handle, **client}
    flow = token_flow(urllib.parse.urlencode(form).encode())
    if authorization:
        flow.request.headers["Authorization"] = authorization
    return flow


def sent(flow: http.HTTPFlow) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(flow.request.get_text() or ""))


THIEVES: dict[str, dict[str, str]] = {
    "another client_secret": {"client_id": "demo", "client_secret": "guess"},
    "the client_id only": {"client_id": "demo"},
    "Basic with another secret": {"authorization": basic("demo", "guess")},
    "the right secret as Basic": {"authorization": basic("demo", "s3cret")},  # not how the owner sent it
    "a client_assertion": {"client_id": "demo", "client_assertion_type": ASSERTION_TYPE,
                           "client_assertion": make_jwt(sub="demo")},
}  # fmt: skip


async def rotated_by_owner(proxy: Proxy) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """A login, then the owner's refresh rotating its refresh handle: what the IdP first sent, the rotated
    handle, and the owner's answer to the rotation."""
    fields, client = await login(proxy)
    handle = body_of(client)["refresh_token"]
    owner = refresh_as(handle, **OWNER)
    assert await proxy.request(owner)
    answer = await proxy.respond(owner, json_response(token_fields(refresh_token="rotated-" + "z" * 40)))
    return fields, handle, body_of(answer)


@pytest.mark.parametrize("thief", THIEVES.values(), ids=THIEVES.keys())
async def test_grace_replay_goes_only_to_the_same_client_authentication(
    proxy: Proxy, thief: dict[str, str]
) -> None:
    fields, handle, rotation = await rotated_by_owner(proxy)
    stolen = refresh_as(handle, **thief)
    assert await proxy.request(stolen)  # to the authorization server, as itself...
    assert sent(stolen)["refresh_token"] == fields["refresh_token"]  # ...with the token it would have had
    verdict = b'{"error":"invalid_client"}'
    answer = await proxy.respond(stolen, json_response(None, status=401, raw=verdict))
    assert answer.status_code == 401
    assert answer.raw_content == verdict
    # The owner's other tabs still get the rotation's answer.
    late = refresh_as(handle, **OWNER)
    assert not await proxy.request(late)
    assert late.response is not None
    assert body_of(late.response) == rotation


async def test_a_thief_refused_invalid_grant_gets_no_replay_and_ends_nothing(proxy: Proxy) -> None:
    _, handle, rotation = await rotated_by_owner(proxy)
    stolen = refresh_as(handle, client_id="demo", client_secret="guess")
    assert await proxy.request(stolen)
    verdict = b'{"error":"invalid_grant","error_description":"Token is not active"}'
    answer = await proxy.respond(stolen, json_response(None, status=400, raw=verdict))
    assert answer.raw_content == verdict
    assert "access_token" not in (answer.get_text() or "")
    current = refresh_flow(rotation["refresh_token"])
    assert await proxy.request(current)  # the owner's chain lives on


async def test_a_thief_the_server_accepts_does_not_take_over_the_replay(proxy: Proxy) -> None:
    # A server that neither rotates strictly nor binds refresh tokens to clients says yes: its verdict.
    _, handle, rotation = await rotated_by_owner(proxy)
    stolen = refresh_as(handle, client_id="other")
    assert await proxy.request(stolen)
    answer = await proxy.respond(stolen, json_response(token_fields(refresh_token="thief-" + "t" * 40)))
    assert is_handle(body_of(answer)["refresh_token"])
    assert body_of(answer)["refresh_token"] not in (handle, rotation["refresh_token"])
    late = refresh_as(handle, **OWNER)
    assert not await proxy.request(late)
    assert late.response is not None
    assert body_of(late.response) == rotation


async def test_a_rotated_record_without_its_client_is_replayed_to_nobody(proxy: Proxy) -> None:
    # Sealed before rotated records named their client and refresh token.
    _, handle, flow = await refreshing(proxy)
    await proxy.respond(flow, json_response(token_fields(refresh_token="rotated-" + "z" * 40)))
    assert proxy.addon.vault
    current = proxy.addon.vault.find_now(handle)
    assert current is not None
    assert current.kind == "rotated"
    old = Record("rotated", current.secret, current.expires_at, current.subject, current.issuer)
    proxy.addon.vault.keep_now(handle, old)
    await assert_refused(proxy, refresh_flow(handle), 400, "invalid_grant")


async def test_a_concurrent_refresh_with_another_client_authentication_goes_on_its_own(proxy: Proxy) -> None:
    _, handle, first = await refreshing(proxy)
    thief = asyncio.create_task(proxy.request(refresh_as(handle, client_id="demo", client_secret="guess")))
    tab = refresh_flow(handle)
    waiting = asyncio.create_task(proxy.request(tab))
    await asyncio.sleep(0.01)
    assert thief.done()  # did not wait for the owner's answer
    assert thief.result()  # went upstream, with the real refresh token
    assert not waiting.done()  # the owner's other tab waits, as before
    answer = await proxy.respond(first, json_response(token_fields(refresh_token="new-" + "n" * 40)))
    assert not await waiting
    assert tab.response is not None
    assert body_of(tab.response) == body_of(answer)


async def test_a_concurrent_refresh_of_another_client_refused_does_not_end_the_owners(proxy: Proxy) -> None:
    fields, handle, first = await refreshing(proxy)
    stolen = refresh_as(handle, client_id="demo", client_secret="guess")
    assert await proxy.request(stolen)
    assert sent(stolen)["refresh_token"] == fields["refresh_token"]
    await proxy.respond(stolen, json_response(None, status=400, raw=b'{"error":"invalid_grant"}'))
    answer = await proxy.respond(first, json_response(token_fields(refresh_token="new-" + "n" * 40)))
    assert answer.status_code == 200
    assert is_handle(body_of(answer)["refresh_token"])


@pytest.mark.parametrize("same_client", [True, False], ids=["same client", "another client"])
async def test_a_rotation_by_another_proxy_is_replayed_to_the_same_client_only(
    proxy: Proxy, same_client: bool
) -> None:
    fields, handle, flow = await refreshing(proxy)
    assert proxy.addon.vault
    # Meanwhile another proxy on the store rotated the handle, for a client that may be another one.
    successor = "S" * 43
    proxy.addon.vault.keep_now(successor, Record("refresh", "next-" + "x" * 40, time.time() + 60))
    client = {"client_id": "demo"} if same_client else {"client_id": "demo", "client_secret": "other"}
    rotation = json.dumps({"access_token": "A" * 43, "refresh_token": successor})
    proxy.addon.vault.keep_now(handle, Record(
        "rotated", rotation, time.time() + 10, issuer=f"{IDP}/token",
        client=policy.client_authentication("", client), refresh_token=fields["refresh_token"],
    ))  # fmt: skip
    verdict = b'{"error":"invalid_grant"}'
    answer = await proxy.respond(flow, json_response(None, status=400, raw=verdict))
    if same_client:
        assert answer.status_code == 200
        assert body_of(answer) == json.loads(rotation)
    else:
        assert answer.raw_content == verdict


async def test_the_replay_of_a_chain_revoked_further_on_hands_out_nothing(proxy: Proxy) -> None:
    _, handle, rotation = await rotated_by_owner(proxy)
    assert proxy.addon.vault
    proxy.addon.vault.forget_now(rotation["refresh_token"])  # revoked, here or by another proxy
    late = refresh_as(handle, **OWNER)
    body = await assert_refused(proxy, late, 400, "invalid_grant")
    assert "access_token" not in body


async def test_the_replay_follows_a_chain_of_rotations(proxy: Proxy) -> None:
    _, first, rotation = await rotated_by_owner(proxy)
    again = refresh_as(rotation["refresh_token"], **OWNER)
    assert await proxy.request(again)
    await proxy.respond(again, json_response(token_fields(refresh_token="third-" + "3" * 40)))
    late = refresh_as(first, **OWNER)
    assert not await proxy.request(late)  # its successor was rotated too: the chain still ends in a live one
    assert late.response is not None
    assert body_of(late.response) == rotation


# -----------------------------------------------------------------------------------------------------------
# A revocation landing in another proxy while a refresh is in flight wins


async def test_a_revocation_by_another_proxy_during_a_refresh_wins(proxy: Proxy) -> None:
    _, handle, flow = await refreshing(proxy)
    assert proxy.addon.vault
    proxy.addon.vault.forget_now(handle)  # another proxy on the store revoked the handle meanwhile
    records = proxy.records
    new = token_fields(refresh_token="new-" + "n" * 40)
    answer = await proxy.respond(flow, json_response(new))
    assert_error(answer, 400, "invalid_grant")
    assert proxy.records == records  # none of the answer's handles was kept
    assert new["refresh_token"] not in (answer.get_text() or "")
    await assert_refused(proxy, refresh_flow(handle), 400, "invalid_grant")


# -----------------------------------------------------------------------------------------------------------
# What the proxy swapped in never comes back


def json_escaped(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


def percent_encoded(text: str) -> str:
    return "".join(f"%{b:02X}" for b in text.encode())


async def test_a_refresh_error_quoting_the_real_refresh_token_shows_the_handle(proxy: Proxy) -> None:
    fields, handle, flow = await refreshing(proxy)
    real = fields["refresh_token"]
    raw = json.dumps({"error": "invalid_grant", "error_description": f"{real} is not active"}).encode()
    answer = await proxy.respond(flow, json_response(None, status=400, raw=raw))
    assert answer.status_code == 400
    assert body_of(answer) == {"error": "invalid_grant", "error_description": f"{handle} is not active"}
    await assert_refused(proxy, refresh_flow(handle), 400, "invalid_grant")  # the verdict still counts


@pytest.mark.parametrize("status", [400, 401, 503])
@pytest.mark.parametrize(
    "quote",
    [
        lambda t: f'{{"error": "invalid_grant", "error_description": "{json_escaped(t)}"}}',
        lambda t: f'{{"error": "invalid_grant", "error_description": "{percent_encoded(t)}"}}',
        lambda t: f"error=invalid_grant&error_description={percent_encoded(json_escaped(t))}",
    ],
    ids=["JSON-escaped", "percent-encoded", "both"],
)
async def test_a_refresh_error_quoting_the_real_refresh_token_otherwise_is_refused(
    proxy: Proxy, quote: Any, status: int
) -> None:
    fields, _, flow = await refreshing(proxy)
    raw = quote(fields["refresh_token"]).encode()
    answer = await proxy.respond(flow, json_response(None, status=status, raw=raw))
    assert_error(answer, 502, "server_error")


@pytest.mark.parametrize(
    ("status", "raw"),
    [(200, json.dumps(token_fields()).encode()), (200, b""), (400, b'{"error": "invalid_grant"}')],
    ids=["tokens", "empty", "error"],
)
async def test_an_answer_quoting_the_real_refresh_token_in_a_header_is_refused(
    proxy: Proxy, status: int, raw: bytes
) -> None:
    fields, _, flow = await refreshing(proxy)
    headers = {"X-Debug": f"refresh_token={fields['refresh_token']}"}
    answer = await proxy.respond(flow, json_response(None, status=status, headers=headers, raw=raw))
    assert_error(answer, 502, "server_error")


async def test_a_refresh_answer_echoing_the_old_refresh_token_shows_the_handle(proxy: Proxy) -> None:
    fields, handle, flow = await refreshing(proxy)
    real = fields["refresh_token"]
    echo = token_fields(refresh_token="new-" + "n" * 40, previous_refresh_token=real)
    answer = await proxy.respond(flow, json_response(echo))
    assert body_of(answer)["previous_refresh_token"] == handle
    assert real not in (answer.get_text() or "")
    late = refresh_flow(handle)  # the grace replay of that answer
    assert not await proxy.request(late)
    assert late.response is not None
    assert body_of(late.response) == body_of(answer)


async def test_an_answer_without_tokens_quoting_the_real_refresh_token_shows_the_handle(proxy: Proxy) -> None:
    fields, handle, flow = await refreshing(proxy)
    raw = json.dumps({"access_token": "opaque-2", "note": f"was {fields['refresh_token']}"}).encode()
    answer = await proxy.respond(flow, json_response(None, raw=raw))
    assert body_of(answer) == {"access_token": "opaque-2", "note": f"was {handle}"}
