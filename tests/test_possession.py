"""possession.py and its calls from the token, refresh and API routes: DPoP-bound handles (RFC 9449).

The proof checks themselves are dpop.py's (tests/test_dpop.py); here: which URL a proof must name, that a
valid proof binds the handles it gets, that a bound handle works only as ``DPoP`` with a proof of its key,
that a jti is accepted once (also by a second proxy on the same store), refresh of a bound refresh handle,
authorization servers that bind tokens themselves, and the options.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy import contentviews, http

from hooks import HookDriver as Proxy
from hooks import driven_addon, flow_for
from oauth_flows import (
    IDP,
    REVERSE_API,
    assert_error,
    body_of,
    json_response,
    make_jwt,
    revoke_flow,
    token_fields,
)
from redis_server import RedisServer
from splittoken import dpop, options, possession
from splittoken.errors import OptionInvalid, TokenRefused
from splittoken.seal import Record, open_sealed, seal
from splittoken.settings import parse_settings
from splittoken.view import SplitTokenContentview

KEY = ec.generate_private_key(ec.SECP256R1())
THIEF_KEY = ec.generate_private_key(ec.SECP256R1())
JKT = dpop.thumbprint(dpop.public_jwk(KEY))
TOKEN_URL = f"{IDP}/token"
LISTENER = ("127.0.0.1", 8443)  # where the API listener of these tests is reached
API_URL = "http://127.0.0.1:8443/items"  # what the client addressed
UPSTREAM_API = "http://api.example/items"  # where reverse mode sends it
PASSWORD_GRANT = b"grant_type=password&username=alice&password=pw&client_id=demo"


def token_request(body: bytes = PASSWORD_GRANT, proof: str | None = None) -> http.HTTPFlow:
    headers = [("Content-Type", "application/x-www-form-urlencoded")]
    if proof is not None:
        headers.append(("DPoP", proof))
    return flow_for("POST", TOKEN_URL, body, headers)


def api_call(*headers: tuple[str, str], method: str = "GET") -> http.HTTPFlow:
    flow = flow_for(method, UPSTREAM_API, b"", list(headers), REVERSE_API)
    flow.client_conn.sockname = LISTENER
    return flow


def proven_call(handle: str, key: Any = KEY, **proof: Any) -> http.HTTPFlow:
    url = proof.pop("url", API_URL)
    method = proof.pop("method", "GET")
    made = dpop.make_proof(key, method, url, access_token=proof.pop("access_token", handle), **proof)
    return api_call(("Authorization", f"DPoP {handle}"), ("DPoP", made))


async def bound_login(proxy: Proxy, fields: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict]:
    """A password grant with a proof of KEY; returns what the IdP sent and what the client got."""
    fields = fields if fields is not None else token_fields()
    flow = token_request(proof=dpop.make_proof(KEY, "POST", TOKEN_URL))
    answer = await proxy.exchange(flow, json_response(fields))
    assert answer.status_code == 200, answer.text
    return fields, body_of(answer)


def stored(proxy: Proxy, handle: str) -> Record:
    assert proxy.addon.vault
    record = proxy.addon.vault.find_now(handle)
    assert record is not None
    return record


def assert_dpop_refused(flow: http.HTTPFlow, error: str) -> None:
    """401 with a DPoP challenge naming ``error`` and the accepted algorithms; nothing went upstream."""
    assert flow.response is not None, "went upstream"
    assert_error(flow.response, 401, error)
    challenge = flow.response.headers["WWW-Authenticate"]
    assert challenge.startswith(f'DPoP error="{error}"'), challenge
    assert 'algs="RS256 ' in challenge and "none" not in challenge and "HS256" not in challenge
    assert "Bearer ey" not in flow.request.headers.get("authorization", "")


# ---------------------------------------------------------------------------------------------------------
# Token requests


async def test_a_token_request_with_a_proof_gets_bound_handles(proxy: Proxy) -> None:
    proof = dpop.make_proof(KEY, "POST", TOKEN_URL)
    flow = token_request(proof=proof)
    assert await proxy.request(flow)
    assert flow.request.headers["DPoP"] == proof  # on to the authorization server, unchanged
    answer = await proxy.respond(flow, json_response(token_fields()))
    body = body_of(answer)
    assert body["token_type"] == "DPoP"
    assert stored(proxy, body["access_token"]).jkt == JKT
    assert stored(proxy, body["refresh_token"]).jkt == JKT
    assert "DPoP-bound" in flow.comment
    assert "splits=1 dpop_bound_splits=1 bearer_splits=0" in proxy.tctx.master.commands.call(
        "splittoken.stats"
    )


async def test_a_token_request_without_a_proof_gets_bearer_handles(proxy: Proxy) -> None:
    answer = await proxy.exchange(token_request(), json_response(token_fields()))
    body = body_of(answer)
    assert body["token_type"] == "Bearer"
    assert stored(proxy, body["access_token"]).jkt == ""
    assert stored(proxy, body["refresh_token"]).jkt == ""


@pytest.mark.parametrize("mode", ["optional", "required"])
async def test_a_token_request_with_a_broken_proof_is_refused(proxy: Proxy, mode: str) -> None:
    """Optional too: a client that sent a proof must not get handles that any thief can use."""
    proxy.configure(splittoken_dpop=mode)
    wrong_url = dpop.make_proof(KEY, "POST", "http://idp.example/elsewhere")
    flow = token_request(proof=wrong_url)
    assert not await proxy.request(flow)
    assert flow.response is not None
    assert_error(flow.response, 400, "invalid_dpop_proof")
    assert proxy.records == 0


async def test_required_refuses_a_token_request_without_a_proof(proxy: Proxy) -> None:
    proxy.configure(splittoken_dpop="required")
    flow = token_request()
    assert not await proxy.request(flow)
    assert flow.response is not None
    body = assert_error(flow.response, 400, "invalid_dpop_proof")
    assert body["error_description"] == "a DPoP proof is required"
    # And with one, it goes on.
    _, body = await bound_login(proxy)
    assert body["token_type"] == "DPoP"


async def test_off_ignores_proofs_and_the_dpop_scheme(proxy: Proxy) -> None:
    proxy.configure(splittoken_dpop="off")
    _, body = await bound_login(proxy)
    assert body["token_type"] == "Bearer"
    assert stored(proxy, body["access_token"]).jkt == ""
    flow = proven_call(body["access_token"])
    assert not await proxy.request(flow)
    assert flow.response is not None
    assert_error(flow.response, 400, "invalid_request")


async def test_the_same_proof_twice_at_the_token_endpoint_is_refused(proxy: Proxy) -> None:
    proof = dpop.make_proof(KEY, "POST", TOKEN_URL)
    assert await proxy.request(token_request(proof=proof))
    again = token_request(proof=proof)
    assert not await proxy.request(again)
    assert again.response is not None
    body = assert_error(again.response, 400, "invalid_dpop_proof")
    assert "used before" in body["error_description"]


# ---------------------------------------------------------------------------------------------------------
# Authorization servers that bind tokens themselves


async def test_a_token_the_server_bound_to_the_proofs_key_is_accepted(proxy: Proxy) -> None:
    fields = token_fields(access_token=make_jwt(cnf={"jkt": JKT}), token_type="DPoP")
    _, body = await bound_login(proxy, fields)
    assert body["token_type"] == "DPoP"
    assert stored(proxy, body["access_token"]).jkt == JKT


async def test_a_token_the_server_bound_to_another_key_is_refused(proxy: Proxy) -> None:
    other = dpop.thumbprint(dpop.public_jwk(THIEF_KEY))
    fields = token_fields(access_token=make_jwt(cnf={"jkt": other}))
    flow = token_request(proof=dpop.make_proof(KEY, "POST", TOKEN_URL))
    answer = await proxy.exchange(flow, json_response(fields))
    assert_error(answer, 502, "server_error")
    assert proxy.records == 1  # the proof's jti, remembered; no handle


async def test_a_token_the_server_bound_without_a_proof_here_stays_bound(proxy: Proxy) -> None:
    fields = token_fields(access_token=make_jwt(cnf={"jkt": JKT}))
    answer = await proxy.exchange(token_request(), json_response(fields))
    body = body_of(answer)
    assert body["token_type"] == "DPoP"
    assert stored(proxy, body["access_token"]).jkt == JKT


async def test_off_binds_nothing_not_even_a_token_the_server_bound(proxy: Proxy) -> None:
    """off: DPoP is not looked at, cnf.jkt included; an API that gets the JWT enforces its binding."""
    proxy.configure(splittoken_dpop="off")
    other = dpop.thumbprint(dpop.public_jwk(THIEF_KEY))
    fields = token_fields(access_token=make_jwt(cnf={"jkt": other}))
    _, body = await bound_login(proxy, fields)
    assert body["token_type"] == "Bearer"
    assert stored(proxy, body["access_token"]).jkt == ""


@pytest.mark.parametrize("cnf", [{"jkt": 42}, {"jkt": ""}, {"jkt": None}])
def test_a_malformed_cnf_jkt_is_refused(cnf: dict[str, Any]) -> None:
    with pytest.raises(TokenRefused):
        possession.bound_to({"cnf": cnf}, JKT)


def test_without_cnf_the_proofs_key_binds() -> None:
    assert possession.bound_to({"cnf": "x"}, JKT) == JKT
    assert possession.bound_to({}, "") == ""


# ---------------------------------------------------------------------------------------------------------
# API calls


async def test_a_bound_handle_with_a_proof_is_joined_and_the_proof_stays_here(proxy: Proxy) -> None:
    fields, body = await bound_login(proxy)
    flow = proven_call(body["access_token"])
    assert await proxy.request(flow)
    assert flow.request.headers["Authorization"] == f"Bearer {fields['access_token']}"
    assert "DPoP" not in flow.request.headers
    assert "DPoP-bound" in flow.comment


async def test_a_stolen_bound_handle_without_the_key_is_refused(proxy: Proxy) -> None:
    _, body = await bound_login(proxy)
    handle = body["access_token"]
    as_bearer = api_call(("Authorization", f"Bearer {handle}"))
    assert not await proxy.request(as_bearer)
    assert_dpop_refused(as_bearer, "invalid_token")
    no_proof = api_call(("Authorization", f"DPoP {handle}"))
    assert not await proxy.request(no_proof)
    assert_dpop_refused(no_proof, "invalid_dpop_proof")
    thiefs_key = proven_call(handle, key=THIEF_KEY)
    assert not await proxy.request(thiefs_key)
    assert_dpop_refused(thiefs_key, "invalid_dpop_proof")


async def test_two_dpop_header_fields_are_refused(proxy: Proxy) -> None:
    """Each may be a valid proof: which one counts would be the proxy's guess (RFC 9449 §4.3: one)."""
    _, body = await bound_login(proxy)
    handle = body["access_token"]
    one, other = (dpop.make_proof(KEY, "GET", API_URL, access_token=handle) for _ in range(2))
    flow = api_call(("Authorization", f"DPoP {handle}"), ("DPoP", one), ("dpop", other))
    assert not await proxy.request(flow)
    assert_dpop_refused(flow, "invalid_dpop_proof")
    token = token_request(proof=dpop.make_proof(KEY, "POST", TOKEN_URL))
    token.request.headers.add("DPoP", dpop.make_proof(KEY, "POST", TOKEN_URL))
    assert not await proxy.request(token)
    assert token.response is not None
    assert_error(token.response, 400, "invalid_dpop_proof")


async def test_a_bearer_handle_presented_as_dpop_is_refused(proxy: Proxy) -> None:
    body = body_of(await proxy.exchange(token_request(), json_response(token_fields())))
    flow = proven_call(body["access_token"])
    assert not await proxy.request(flow)
    assert_dpop_refused(flow, "invalid_token")


async def test_a_proof_beside_a_bearer_handle_does_not_reach_the_api(proxy: Proxy) -> None:
    """The API takes the proxy's word for possession: a proof the proxy never checked must not reach it."""
    body = body_of(await proxy.exchange(token_request(), json_response(token_fields())))
    handle = body["access_token"]
    proof = dpop.make_proof(KEY, "GET", API_URL, access_token=handle)
    flow = api_call(("Authorization", f"Bearer {handle}"), ("DPoP", proof))
    assert await proxy.request(flow)
    assert flow.request.headers["Authorization"].startswith("Bearer ey")
    assert "DPoP" not in flow.request.headers


async def test_an_unknown_handle_presented_as_dpop_is_refused(proxy: Proxy) -> None:
    flow = proven_call("bm90LWEtaGFuZGxl")
    assert not await proxy.request(flow)
    assert_dpop_refused(flow, "invalid_token")


@pytest.mark.parametrize(
    "wrong",
    [
        {"method": "POST"},  # htm
        {"url": UPSTREAM_API},  # htu: the upstream URL, not the one the client used
        {"url": "http://127.0.0.1:8444/items"},  # htu: another listener
        {"url": "https://127.0.0.1:8443/items"},  # htu: another scheme
        {"access_token": "YW5vdGhlci1oYW5kbGU"},  # ath of another handle
        {"iat": 1_000_000_000},  # long ago
    ],
)
async def test_a_proof_for_something_else_is_refused(proxy: Proxy, wrong: dict[str, Any]) -> None:
    _, body = await bound_login(proxy)
    flow = proven_call(body["access_token"], **wrong)
    assert not await proxy.request(flow)
    assert_dpop_refused(flow, "invalid_dpop_proof")


async def test_a_proof_names_the_method_of_the_call_it_is_for(proxy: Proxy) -> None:
    """htm is the API call's own method: a proof made for a GET does not let the handle DELETE."""
    _, body = await bound_login(proxy)
    handle = body["access_token"]
    for_get = dpop.make_proof(KEY, "GET", API_URL, access_token=handle)
    delete = api_call(("Authorization", f"DPoP {handle}"), ("DPoP", for_get), method="DELETE")
    assert not await proxy.request(delete)
    assert_dpop_refused(delete, "invalid_dpop_proof")
    for_delete = dpop.make_proof(KEY, "DELETE", API_URL, access_token=handle)
    assert await proxy.request(
        api_call(("Authorization", f"DPoP {handle}"), ("DPoP", for_delete), method="DELETE")
    )


async def test_htu_ignores_query_and_default_port_spelling(proxy: Proxy) -> None:
    proxy.configure(splittoken_public_urls=["https://API.example.com@8443"])
    _, body = await bound_login(proxy)
    handle = body["access_token"]
    flow = proven_call(handle, url="https://api.example.com:443/items")
    flow.request.path = "/items?page=2"
    assert await proxy.request(flow)


async def test_a_proof_is_accepted_once(proxy: Proxy) -> None:
    _, body = await bound_login(proxy)
    handle = body["access_token"]
    proof = dpop.make_proof(KEY, "GET", API_URL, access_token=handle)
    assert await proxy.request(api_call(("Authorization", f"DPoP {handle}"), ("DPoP", proof)))
    replay = api_call(("Authorization", f"DPoP {handle}"), ("DPoP", proof))
    assert not await proxy.request(replay)
    assert_dpop_refused(replay, "invalid_dpop_proof")
    assert replay.response is not None
    assert "used before" in json.loads(replay.response.content or b"")["error_description"]


@pytest.fixture
def second_proxy(proxy: Proxy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """Another proxy on the first one's store."""
    assert proxy.addon.settings
    with driven_addon(tmp_path_factory.mktemp("second")) as other:
        other.configure(splittoken_store=proxy.addon.settings.store)
        yield other


async def test_a_proof_used_at_one_proxy_is_refused_by_another_on_the_same_store(
    proxy: Proxy, second_proxy: Proxy
) -> None:
    _, body = await bound_login(proxy)
    handle = body["access_token"]
    proof = dpop.make_proof(KEY, "GET", API_URL, access_token=handle)
    assert await proxy.request(api_call(("Authorization", f"DPoP {handle}"), ("DPoP", proof)))
    replay = api_call(("Authorization", f"DPoP {handle}"), ("DPoP", proof))
    assert not await second_proxy.request(replay)
    assert_dpop_refused(replay, "invalid_dpop_proof")
    # A fresh proof works there.
    assert await second_proxy.request(proven_call(handle))


async def test_a_proof_used_at_one_proxy_is_refused_by_another_on_the_same_redis(
    proxy: Proxy, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """As above, with Redis: SET NX, whichever proxy comes second."""
    proxy.configure(splittoken_store=redis_server.url)
    _, body = await bound_login(proxy)
    handle = body["access_token"]
    proof = dpop.make_proof(KEY, "GET", API_URL, access_token=handle)
    with driven_addon(tmp_path_factory.mktemp("second")) as second:
        second.configure(splittoken_store=redis_server.url)
        assert await second.request(api_call(("Authorization", f"DPoP {handle}"), ("DPoP", proof)))
        replay = api_call(("Authorization", f"DPoP {handle}"), ("DPoP", proof))
        assert not await proxy.request(replay)
    assert_dpop_refused(replay, "invalid_dpop_proof")


async def test_a_jti_is_remembered_for_twice_the_window_only(proxy: Proxy, monkeypatch: Any) -> None:
    """Memory stays bounded: each entry expires when no clock within the window could accept its proof."""
    proxy.configure(splittoken_dpop_window=5)
    _, body = await bound_login(proxy)
    assert proxy.addon.vault
    vault, added = proxy.addon.vault, []
    now = vault.clock()
    monkeypatch.setattr(vault, "clock", lambda: now)
    real_add = vault.store.add
    monkeypatch.setattr(vault.store, "add", lambda *args: added.append(args) or real_add(*args))
    assert await proxy.request(proven_call(body["access_token"], jti="only-once"))
    ((key, value, expires_at),) = added
    assert key == possession.jti_key(dpop.Proof(JKT, "only-once", 0, None)) and value == b""
    assert expires_at == now + 10


# ---------------------------------------------------------------------------------------------------------
# Refresh (RFC 9449 §5)


def refresh_request(handle: str, key: Any | None) -> http.HTTPFlow:
    fields = {"grant_type": "refresh_token", "refresh_token": handle, "client_id": "demo"}
    form = urllib.parse.urlencode(fields)
    proof = dpop.make_proof(key, "POST", TOKEN_URL) if key is not None else None
    return token_request(form.encode(), proof)


@pytest.mark.parametrize("key", [None, THIEF_KEY], ids=["no proof", "another key"])
async def test_a_bound_refresh_handle_needs_a_proof_of_its_key(proxy: Proxy, key: Any) -> None:
    fields, body = await bound_login(proxy)
    handle = body["refresh_token"]
    stolen = refresh_request(handle, key)
    assert not await proxy.request(stolen)
    assert stolen.response is not None
    assert_error(stolen.response, 400, "invalid_dpop_proof")
    # Still the owner's: with a proof of its key it goes upstream as the real refresh token.
    owner = refresh_request(handle, KEY)
    assert await proxy.request(owner)
    assert fields["refresh_token"] in (owner.request.get_text() or "")
    rotated = token_fields(refresh_token="rotated-" + "z" * 40)
    answer = body_of(await proxy.respond(owner, json_response(rotated)))
    assert answer["token_type"] == "DPoP"
    assert stored(proxy, answer["refresh_token"]).jkt == JKT
    assert stored(proxy, answer["access_token"]).jkt == JKT
    # The rotation's replay, within the grace period, is for the key's holder only.
    late = refresh_request(handle, key)
    assert not await proxy.request(late)
    assert late.response is not None
    assert_error(late.response, 400, "invalid_dpop_proof")


async def test_a_thief_does_not_share_the_owners_refresh_in_flight(proxy: Proxy) -> None:
    """Concurrent refreshes of one handle by one client share one answer: the DPoP key is part of who the
    client is, so a thief with the same (public) client id waits for nothing and gets nothing."""
    _, body = await bound_login(proxy)
    handle = body["refresh_token"]
    owner = refresh_request(handle, KEY)
    assert await proxy.request(owner)  # upstream, not answered yet
    thief = refresh_request(handle, None)
    assert not await asyncio.wait_for(proxy.request(thief), 5)
    assert thief.response is not None
    assert_error(thief.response, 400, "invalid_dpop_proof")
    answer = await proxy.respond(owner, json_response(token_fields(refresh_token="n" * 40)))
    assert answer.status_code == 200


async def test_a_bearer_refresh_handle_refreshed_with_a_proof_gets_bound_handles(proxy: Proxy) -> None:
    body = body_of(await proxy.exchange(token_request(), json_response(token_fields())))
    flow = refresh_request(body["refresh_token"], KEY)
    answer = body_of(await proxy.exchange(flow, json_response(token_fields(refresh_token="n" * 40))))
    assert stored(proxy, answer["access_token"]).jkt == JKT


# ---------------------------------------------------------------------------------------------------------
# htu, records, options


def test_htu_is_the_listener_in_reverse_mode_and_the_request_url_otherwise() -> None:
    flow = api_call()
    assert possession.request_url(flow, {}) == "http://127.0.0.1:8443/items"
    flow.client_conn.tls = True
    flow.client_conn.sockname = ("::1", 443)
    assert possession.request_url(flow, {}) == "https://[::1]:443/items"
    assert possession.request_url(flow, {443: "https://api.example.com"}) == "https://api.example.com/items"
    flow.client_conn.tls = False
    flow.client_conn.sockname = ("::ffff:127.0.0.1", 8080, 0, 0)
    assert possession.request_url(flow, {}) == "http://127.0.0.1:8080/items"
    regular = flow_for("GET", "https://api.example.com:8443/x?y=1")
    assert possession.request_url(regular, {}) == "https://api.example.com:8443/x?y=1"


def test_records_older_than_the_binding_open_as_bearer_handles() -> None:
    record = Record("access", "h.p", 2e9, "alice", "http://idp.example/token", jkt=JKT)
    assert open_sealed("sig", seal("sig", record)).jkt == JKT
    old = {k: v for k, v in record.__dict__.items() if k != "jkt"}
    assert Record(**old).jkt == ""


BASE = {name: option.default for name, option in ((o.name, o) for o in options.OPTIONS)} | {"confdir": "/x"}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("splittoken_dpop", "on"),
        ("splittoken_dpop", "Required"),
        ("splittoken_dpop_window", 0),
        ("splittoken_dpop_window", True),
        ("splittoken_public_urls", ["api.example.com@8443"]),
        ("splittoken_public_urls", ["https://api.example.com/path@8443"]),
        ("splittoken_public_urls", ["https://api.example.com@0"]),
        ("splittoken_public_urls", ["https://api.example.com@70000"]),
        ("splittoken_public_urls", ["https://a.example@8443", "https://b.example@8443"]),
        ("splittoken_public_urls", ["ftp://api.example.com@21"]),
    ],
)
def test_bad_dpop_options_are_refused(name: str, value: Any) -> None:
    with pytest.raises(OptionInvalid) as refused:
        parse_settings(BASE | {name: value})
    assert name in str(refused.value)


def test_dpop_options_parse() -> None:
    settings = parse_settings(
        BASE | {"splittoken_dpop": "required", "splittoken_public_urls": ["https://[::1]:8443@443"]}
    )
    assert settings.dpop == "required"
    assert settings.dpop_window == 60
    assert settings.public_urls == {443: "https://[::1]:8443"}


def test_store_key_of_a_jti_is_scoped_to_the_key() -> None:
    proof = dpop.Proof(JKT, "j", 0, None)
    other = dpop.Proof(dpop.thumbprint(dpop.public_jwk(THIEF_KEY)), "j", 0, None)
    assert possession.jti_key(proof) != possession.jti_key(other)
    assert len(possession.jti_key(proof)) == 64


# ---------------------------------------------------------------------------------------------------------
# Server nonces (RFC 9449 §8, §9)


def nonce_of(response: http.Response | None, status: int) -> str:
    assert response is not None
    assert_error(response, status, "use_dpop_nonce")
    nonce = response.headers["DPoP-Nonce"]
    assert len(nonce) >= 22
    return nonce


@pytest.fixture
def nonce_proxies(proxy: Proxy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proxy, Proxy]]:
    """Two proxies on one store, demanding nonces. Each is configured before the next one's context exists:
    a taddons context takes over mitmproxy's global ctx, which configure reads."""
    proxy.configure(splittoken_dpop_nonce=True)
    assert proxy.addon.settings
    with driven_addon(tmp_path_factory.mktemp("second")) as other:
        other.configure(splittoken_store=proxy.addon.settings.store, splittoken_dpop_nonce=True)
        yield proxy, other


async def test_with_nonces_a_proof_needs_the_proxys_nonce(nonce_proxies: tuple[Proxy, Proxy]) -> None:
    proxy, second_proxy = nonce_proxies
    first = token_request(proof=dpop.make_proof(KEY, "POST", TOKEN_URL))
    assert not await proxy.request(first)
    nonce = nonce_of(first.response, 400)
    retried = token_request(proof=dpop.make_proof(KEY, "POST", TOKEN_URL, nonce=nonce))
    body = body_of(await proxy.exchange(retried, json_response(token_fields())))
    handle = body["access_token"]
    assert body["token_type"] == "DPoP"

    call = proven_call(handle)
    assert not await proxy.request(call)
    assert call.response is not None
    assert call.response.headers["WWW-Authenticate"].startswith('DPoP error="use_dpop_nonce"')
    assert nonce_of(call.response, 401) == nonce  # one nonce per window
    assert await proxy.request(proven_call(handle, nonce=nonce))
    # Made by one proxy, good at every proxy on the store.
    assert await second_proxy.request(proven_call(handle, nonce=nonce))
    wrong = proven_call(handle, nonce="bm90LXRoZS1ub25jZQ")
    assert not await second_proxy.request(wrong)
    nonce_of(wrong.response, 401)


async def test_a_nonce_is_good_for_its_window_and_the_next_only(proxy: Proxy, monkeypatch: Any) -> None:
    proxy.configure(splittoken_dpop_nonce=True, splittoken_dpop_window=30)
    assert proxy.addon.vault
    vault = proxy.addon.vault
    start = vault.clock()
    first = token_request(proof=dpop.make_proof(KEY, "POST", TOKEN_URL, iat=start))
    assert not await proxy.request(first)
    nonce = nonce_of(first.response, 400)
    monkeypatch.setattr(vault, "clock", lambda: start + 30)
    later = token_request(proof=dpop.make_proof(KEY, "POST", TOKEN_URL, iat=start + 30, nonce=nonce))
    assert await proxy.request(later)
    monkeypatch.setattr(vault, "clock", lambda: start + 61)
    stale = token_request(proof=dpop.make_proof(KEY, "POST", TOKEN_URL, iat=start + 61, nonce=nonce))
    assert not await proxy.request(stale)
    assert nonce_of(stale.response, 400) != nonce


async def test_a_proxy_remembers_two_nonces_at_most(proxy: Proxy, monkeypatch: Any) -> None:
    """Memory stays bounded: the nonces of windows gone by are dropped, whatever the uptime."""
    proxy.configure(splittoken_dpop_nonce=True, splittoken_dpop_window=30)
    assert proxy.addon.vault
    vault = proxy.addon.vault
    start = vault.clock()
    for window in range(5):
        now = start + 30 * window
        monkeypatch.setattr(vault, "clock", lambda now=now: now)
        flow = token_request(proof=dpop.make_proof(KEY, "POST", TOKEN_URL, iat=now))
        assert not await proxy.request(flow)
        nonce_of(flow.response, 400)
    assert len(proxy.addon.routes.token.possession._nonces) <= 2


# ---------------------------------------------------------------------------------------------------------
# What mitmweb shows


def shown(flow: http.HTTPFlow, message: http.Message) -> str:
    metadata = contentviews.Metadata(flow=flow, http_message=message, content_type="application/json")
    return SplitTokenContentview().prettify(message.get_content() or b"", metadata)


async def test_the_content_view_and_comments_show_the_binding(proxy: Proxy) -> None:
    login = token_request(proof=dpop.make_proof(KEY, "POST", TOKEN_URL))
    answer = await proxy.exchange(login, json_response(token_fields()))
    handle = body_of(answer)["access_token"]
    assert JKT in shown(login, answer) and "DPoP proof: proof verified" in shown(login, answer)

    joined = proven_call(handle)
    assert await proxy.request(joined)
    assert f"DPoP-bound to key: {JKT}" in shown(joined, joined.request)
    assert joined.comment.startswith("split-token: re-joined DPoP-bound handle")

    broken = api_call(("Authorization", f"DPoP {handle}"), ("DPoP", "not.a.proof"))
    assert not await proxy.request(broken)
    text = shown(broken, broken.request)
    assert "DPoP proof: DPoP proof is unreadable" in text
    assert "answered by the proxy: 401" in text


# ---------------------------------------------------------------------------------------------------------
# Fuzzing: no crash, and no join, on a proof that is not exactly right


def _altered(proof: str, at: int, char: str) -> str:
    """One character of the signing input (header.payload) replaced; the signature's last character is left
    alone, since base64url's spare bits there would leave the same signature."""
    signing_input = proof.rpartition(".")[0]
    at %= len(signing_input)
    return proof[:at] + char + proof[at + 1 :] if proof[at] != char else proof[:at] + proof[at + 1 :]


@settings(
    max_examples=60, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip
@given(data=st.data())
async def test_a_proof_not_exactly_right_is_never_joined(proxy: Proxy, data: st.DataObject) -> None:
    handle = getattr(proxy, "bound_handle", None)
    if handle is None:
        _, body = await bound_login(proxy)
        handle = proxy.bound_handle = body["access_token"]  # type: ignore[attr-defined]
    good = dpop.make_proof(KEY, "GET", API_URL, access_token=handle)
    proof = data.draw(
        st.one_of(
            st.builds(_altered, st.just(good), st.integers(0, 10**6), st.sampled_from("Aa0_-.=,%é ")),
            st.text(max_size=300).map(lambda t: t.encode("utf-8").decode("latin-1")),
            st.just(good).map(lambda p: f"{p},{p}"),
            st.just(good).map(lambda p: p.rpartition(".")[0] + "."),
            st.just(good).map(lambda p: p + "."),
        )
    )
    scheme = data.draw(st.sampled_from(["DPoP", "dpop", "DPoP ", "Bearer", ""]))
    flow = api_call(("Authorization", f"{scheme} {handle}".strip()), ("DPoP", proof))
    assert not await proxy.request(flow)
    assert flow.response is not None and flow.response.status_code in (400, 401)
    assert not flow.request.headers.get("authorization", "").startswith("Bearer ey")


# ---------------------------------------------------------------------------------------------------------
# Introspection by APIs outside the proxy


def introspected(answer: dict[str, Any]) -> http.Response:
    return json_response({"sub": "alice", "token_type": "Bearer", **answer})


@pytest.mark.parametrize("field", ["access_token", "refresh_token"])
async def test_introspecting_a_bound_handle_names_its_key(proxy: Proxy, field: str) -> None:
    """RFC 9449 §6.2: the answer says the token is DPoP-bound, and to which key, which the server never
    learnt when the proxy bound the handle. Without it an API outside the proxy, asking the server, would take
    a stolen bound handle for a bearer token."""
    _, client = await bound_login(proxy)
    flow = revoke_flow(client[field], url=f"{IDP}/token/introspect")
    assert await proxy.request(flow)
    answer = await proxy.respond(flow, introspected({"active": True, "cnf": {"x5t#S256": "c2VydmVy"}}))
    assert json.loads(answer.content or b"") == {
        "active": True, "sub": "alice", "token_type": "DPoP", "cnf": {"x5t#S256": "c2VydmVy", "jkt": JKT},
    }  # fmt: skip


async def test_introspection_answers_of_inactive_or_bearer_handles_stay_as_the_server_wrote_them(
    proxy: Proxy,
) -> None:
    _, bound = await bound_login(proxy)
    inactive = revoke_flow(bound["access_token"], url=f"{IDP}/token/introspect")
    assert await proxy.request(inactive)
    answer = await proxy.respond(inactive, introspected({"active": False}))
    assert json.loads(answer.content or b"") == {"active": False, "sub": "alice", "token_type": "Bearer"}
    bearer = body_of(await proxy.exchange(token_request(), json_response(token_fields())))
    flow = revoke_flow(bearer["access_token"], url=f"{IDP}/token/introspect")
    assert await proxy.request(flow)
    answer = await proxy.respond(flow, introspected({"active": True}))
    assert json.loads(answer.content or b"") == {"active": True, "sub": "alice", "token_type": "Bearer"}
