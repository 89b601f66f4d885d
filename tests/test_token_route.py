"""token_route.py: token endpoint responses split into handles; what must never reach the client."""

from __future__ import annotations

import gzip
import json
import time
import urllib.parse
from typing import Any

import jwt
import pytest
from mitmproxy import http

from hooks import HookDriver as Proxy
from oauth_flows import (
    REVERSE_IDP,
    api_flow,
    assert_error,
    assert_no_jwt,
    assert_refused,
    body_of,
    form_response,
    is_handle,
    json_response,
    login,
    make_jwt,
    refresh_flow,
    sig,
    store_down,
    token_fields,
    token_flow,
)
from splittoken import jws, policy


async def test_json_token_response_is_split(proxy: Proxy) -> None:
    fields, client = await login(proxy, headers={"X-Provider": "keycloak", "ETag": '"abc"'})
    body = body_of(client)
    access = fields["access_token"]
    assert body["access_token"] == sig(access)
    assert is_handle(body["refresh_token"])
    assert body["refresh_token"] != fields["refresh_token"]
    assert body["id_token"] == fields["id_token"]  # meant for the client: unchanged
    for name in ("token_type", "expires_in", "refresh_expires_in", "scope", "session_state"):
        assert body[name] == fields[name]
    assert set(body) == set(fields)
    assert client.headers["X-Request-Id"] == "req-42"
    assert client.headers["X-Provider"] == "keycloak"
    assert client.headers["Content-Type"] == "application/json"
    assert client.headers["Cache-Control"] == "no-store"
    assert client.headers["Pragma"] == "no-cache"
    assert "ETag" not in client.headers
    assert int(client.headers["Content-Length"]) == len(client.raw_content or b"")
    raw = client.raw_content or b""
    assert access.rpartition(".")[0].encode() not in raw
    assert fields["refresh_token"].encode() not in raw
    assert proxy.records == 2
    assert proxy.addon.events.counts["splits"] == 1

    flow = api_flow(f"Bearer {body['access_token']}")
    assert await proxy.request(flow)
    assert flow.request.headers["Authorization"] == f"Bearer {access}"


async def test_form_token_response_is_split(proxy: Proxy) -> None:
    fields = token_fields()
    client = await proxy.exchange(token_flow(), form_response(fields))
    assert client.headers["Content-Type"] == "application/x-www-form-urlencoded"
    body = body_of(client)
    assert body["access_token"] == sig(fields["access_token"])
    assert is_handle(body["refresh_token"])
    assert body["id_token"] == fields["id_token"]
    assert body["expires_in"] == "300"
    assert client.headers["Cache-Control"] == "no-store"
    assert int(client.headers["Content-Length"]) == len(client.raw_content or b"")
    assert_no_jwt(
        (client.raw_content or b"").replace(fields["id_token"].encode(), b""), fields["access_token"]
    )


async def test_gzip_token_response_is_split_and_stays_gzip(proxy: Proxy) -> None:
    fields = token_fields()
    upstream = json_response(fields)
    upstream.encode("gzip")
    assert upstream.raw_content != upstream.content
    client = await proxy.exchange(token_flow(), upstream)
    assert client.headers["Content-Encoding"] == "gzip"
    raw = client.raw_content or b""
    assert int(client.headers["Content-Length"]) == len(raw)
    body = json.loads(gzip.decompress(raw))
    assert body["access_token"] == sig(fields["access_token"])
    assert is_handle(body["refresh_token"])


async def test_opaque_access_token_passes_byte_for_byte(proxy: Proxy) -> None:
    fields = {"access_token": "opaque-" + "x" * 40, "token_type": "Bearer", "expires_in": 60}
    upstream = json_response(
        fields, raw=b'{ "access_token":"opaque-' + b"x" * 40 + b'", "token_type" : "Bearer"}'
    )
    before = upstream.copy()
    client = await proxy.exchange(token_flow(), upstream)
    assert client.raw_content == before.raw_content
    assert client.headers.fields == before.headers.fields
    assert proxy.records == 0


async def test_opaque_access_token_with_refresh_token_keeps_access_and_hides_refresh(proxy: Proxy) -> None:
    fields = {"access_token": "a.b.c", "refresh_token": "r" * 50, "token_type": "Bearer"}
    client = await proxy.exchange(token_flow(), json_response(fields))
    body = body_of(client)
    assert body["access_token"] == "a.b.c"
    assert is_handle(body["refresh_token"])
    assert proxy.records == 1


async def test_a_json_answer_labelled_a_form_is_read_as_its_client_reads_it(proxy: Proxy) -> None:
    """The client's JSON reader finds the real refresh token in it: it must find a handle instead."""
    fields = {"access_token": "opaque-access", "refresh_token": "rt-REAL-abc123==", "token_type": "Bearer"}
    raw = json.dumps(fields).encode()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    answer = await proxy.exchange(token_flow(), http.Response.make(200, raw, form))
    assert answer.status_code == 200
    assert "rt-REAL" not in (answer.get_text() or "")
    assert json.loads(answer.content or b"")["refresh_token"] != fields["refresh_token"]


@pytest.mark.parametrize(
    "upstream",
    [
        lambda rt: http.Response.make(302, b"", {"Location": f"https://app/cb#refresh_token={rt}"}),
        lambda rt: http.Response.make(200, b"{}", {"Set-Cookie": f"refresh_token={rt}; HttpOnly"}),
        lambda rt: http.Response.make(200, b"{}", {"Link": f"<https://x/?refresh_token={rt}>"}),
        lambda rt: json_response({"error": "invalid_scope", "refresh_token": rt}, status=400),
    ],
    ids=["Location", "Set-Cookie", "Link", "error body"],
)
async def test_an_opaque_refresh_token_outside_a_token_answer_is_refused(proxy: Proxy, upstream: Any) -> None:
    """An opaque refresh token is known by its name only, and none belongs in a header or an error: without
    the check the real one reached the client."""
    real = "opaque-real-refresh-" + "r" * 24
    answer = await proxy.exchange(token_flow(), upstream(real))
    assert_error(answer, 502, "server_error")
    assert real not in str(answer.headers) + (answer.get_text() or "")


@pytest.mark.parametrize("lead", ["\u200b", "\ufeff\ufeff", "x"])
async def test_a_refresh_token_the_proxy_could_not_read_as_a_field_is_refused(
    proxy: Proxy, lead: str
) -> None:
    """A byte before the JSON made it a one-field form to the proxy; a lenient reader skips it and finds the
    real refresh token. Named but not handed out as a handle: refused."""
    raw = (lead + json.dumps({"access_token": "opaque", "refresh_token": "rt-REAL-abc123=="})).encode()
    answer = await proxy.exchange(token_flow(), http.Response.make(200, raw, {"Content-Type": "text/plain"}))
    assert_error(answer, 502, "server_error")


async def test_an_error_that_only_names_the_refresh_token_parameter_passes(proxy: Proxy) -> None:
    """Prose naming the parameter gives no token a value: the client gets the server's 400 as it was."""
    error = {"error": "invalid_request", "error_description": "Missing parameter: refresh_token"}
    answer = await proxy.exchange(token_flow(), json_response(error, status=400))
    assert answer.status_code == 400
    assert json.loads(answer.content or b"") == error


async def test_jwe_access_token_passes_byte_for_byte(proxy: Proxy) -> None:
    header = jwt.utils.base64url_encode(b'{"alg":"RSA-OAEP-256","enc":"A256GCM"}').decode()
    jwe = f"{header}.{'Q' * 342}.{'SVZJVklWSVZJVg'}.{'Y2lwaGVy' * 20}.{'dGFndGFndGFndGFn'}"
    raw = json.dumps({"access_token": jwe, "token_type": "Bearer", "id_token": make_jwt()}).encode()
    upstream = json_response(None, raw=raw)
    client = await proxy.exchange(token_flow(), upstream)
    assert client.raw_content == raw
    assert "Pragma" not in client.headers
    assert proxy.records == 0


async def test_id_token_only_passes_unchanged(proxy: Proxy) -> None:
    raw = json.dumps({"id_token": make_jwt(), "token_type": "Bearer"}).encode()
    client = await proxy.exchange(token_flow(), json_response(None, raw=raw))
    assert client.raw_content == raw


async def test_id_token_must_not_carry_the_access_token_out(proxy: Proxy) -> None:
    # A provider that answers the same JWT as access_token and id_token: the id_token exemption would hand
    # the client the whole access token, which then works at the API without the proxy.
    access = make_jwt()
    client = await proxy.exchange(token_flow(), json_response({"access_token": access, "id_token": access}))
    assert access.encode() not in (client.raw_content or b"")


@pytest.mark.parametrize(
    "id_token", [lambda a: a + "A", lambda a: a.rpartition(".")[0] + ".c2lnbmF0dXJl", lambda a: "x" + a]
)
async def test_an_id_token_holding_the_access_tokens_claims_is_no_id_token(
    proxy: Proxy, id_token: Any
) -> None:
    """The same check, for an id_token that is the access token give or take a character or a signature: its
    claims (and, with the character stripped, the whole token) were the client's to read."""
    access = make_jwt(email="alice@example.com")
    fields = {"access_token": access, "id_token": id_token(access)}
    client = await proxy.exchange(token_flow(), json_response(fields))
    assert access.split(".")[1].encode() not in (client.raw_content or b"")


async def test_jwt_refresh_token_is_replaced(proxy: Proxy) -> None:
    refresh = make_jwt(typ="Refresh", exp=int(time.time()) + 1800)
    fields = token_fields(refresh_token=refresh)
    _, client = await login(proxy, fields)
    body = body_of(client)
    assert is_handle(body["refresh_token"])
    assert_no_jwt((client.raw_content or b"").replace(fields["id_token"].encode(), b""), refresh)


async def test_refresh_token_only_response_is_replaced(proxy: Proxy) -> None:
    client = await proxy.exchange(token_flow(), json_response({"refresh_token": "R" * 30}))
    assert is_handle(body_of(client)["refresh_token"])
    assert client.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("status", [201, 204])
async def test_other_2xx_are_split_too(proxy: Proxy, status: int) -> None:
    fields = token_fields()
    client = await proxy.exchange(token_flow(), json_response(fields, status=status))
    assert body_of(client)["access_token"] == sig(fields["access_token"])


@pytest.mark.parametrize("status", [301, 304, 400, 401, 403, 404, 429, 500, 503])
async def test_non_2xx_token_responses_pass_unchanged(proxy: Proxy, status: int) -> None:
    raw = b'{"error":"invalid_client","error_description":"bad client"}'
    upstream = json_response(None, status=status, raw=raw)
    before = upstream.copy()
    client = await proxy.exchange(token_flow(), upstream)
    assert client.status_code == status
    assert client.raw_content == before.raw_content
    assert client.headers.fields == before.headers.fields


def _unsigned(token: str) -> str:
    return token.rpartition(".")[0] + "."


def _alg_none() -> str:
    return jwt.encode({"sub": "alice", "exp": int(time.time()) + 300}, None, algorithm="none")


@pytest.mark.parametrize(
    "make_access",
    [
        _alg_none,
        lambda: _alg_none() + "c2ln",
        lambda: _unsigned(make_jwt()),
        lambda: make_jwt(exp=int(time.time()) - 60),
        lambda: make_jwt(exp="tomorrow"),
        lambda: make_jwt("HS256", b"k" * 32),  # allowed by default, refused below by splittoken_algorithms
        lambda: "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln",  # payload not JSON
    ],
    ids=["none", "none-signed", "empty-signature", "expired", "exp-string", "hs256", "payload"],
)
async def test_refused_tokens_answer_502_and_store_nothing(proxy: Proxy, make_access: Any) -> None:
    proxy.configure(splittoken_algorithms=["RS256", "ES256"])
    access = make_access()
    fields = token_fields(access_token=access)
    _, client = await login(proxy, fields)
    assert_error(client, 502, "server_error")
    assert proxy.records == 0
    assert_no_jwt(client.content or b"", access, fields["id_token"])
    assert fields["refresh_token"].encode() not in (client.content or b"")
    assert client.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "fields",
    [
        {"access_token": "opaque", "other": "{jwt}"},
        {"access_token": "opaque", "nested": {"deep": ["{jwt}"]}},
        {"access_token": {"value": "{jwt}"}},
        {"access_token": "opaque", "{jwt}": 1},
        {"access_token": " {jwt} "},
        {"access_token": "opaque", "note": "x.{jwt}.y"},
    ],
)
async def test_jws_anywhere_else_is_refused(proxy: Proxy, fields: dict[str, Any]) -> None:
    token = make_jwt()
    raw = json.dumps(fields).replace("{jwt}", token).encode()
    client = await proxy.exchange(token_flow(), json_response(None, raw=raw))
    assert_error(client, 502, "server_error")
    assert_no_jwt(client.content or b"", token)


@pytest.mark.parametrize(
    ("ctype", "template"),
    [
        ("application/json", b'{"access_token": "{jwt}", "access_token": "x"}'),  # duplicate member
        ("application/json", b'{"access_token": "{jwt}"'),  # truncated
        ("application/json", b'["{jwt}"]'),
        ("text/html", b"<html><body>token: {jwt}</body></html>"),
        ("application/json", b'{"access_token": "{jwt}", "name": "\xff"}'),  # not UTF-8
        ("application/x-www-form-urlencoded", b"access_token={jwt}&access_token=x"),
        ("application/jwt", b"{jwt}"),
    ],
)
async def test_unparseable_200_with_a_jws_is_refused(proxy: Proxy, ctype: str, template: bytes) -> None:
    token = make_jwt()
    raw = template.replace(b"{jwt}", token.encode())
    client = await proxy.exchange(token_flow(), json_response(None, raw=raw, headers={"Content-Type": ctype}))
    assert_error(client, 502, "server_error")
    assert_no_jwt(client.content or b"", token)


def _lenient_strings(content: bytes) -> list[str]:
    """What a lenient client (JSON.parse: last duplicate wins; any form parser) reads out of a body."""
    text = content.decode("utf-8", "replace")
    found = [text]
    try:
        found += [json.dumps(json.loads(text))]
        found += [str(json.loads(text))]
    except ValueError:
        pass
    found += [v for _, v in urllib.parse.parse_qsl(text, keep_blank_values=True)]
    return found


@pytest.mark.parametrize(
    ("ctype", "template"),
    [
        # Unparseable only for the duplicate: the escape \u0065 is "e", so the raw text holds "u0065yJhbGc…",
        # which the raw scan does not see as a JWS; JSON.parse in the client keeps the last member: the JWT.
        ("application/json", b'{"access_token": "x", "access_token": "\\u0065{rest}"}'),
        ("application/json", b'["\\u0065{rest}"]'),  # not an object, so unparseable for the proxy
        ("application/json", b'{"a": 1, "a": 2, "note": "\\n{jwt}"}'),
        ("application/x-www-form-urlencoded", b"access_token=x&access_token=%65{rest}"),
        ("application/x-www-form-urlencoded", b"a=1&a=2&note=%3A{jwt}"),
    ],
)
async def test_escaped_jws_in_unparseable_body_is_refused(proxy: Proxy, ctype: str, template: bytes) -> None:
    token = make_jwt()
    raw = template.replace(b"{rest}", token[1:].encode()).replace(b"{jwt}", token.encode())
    upstream = json_response(None, raw=raw, headers={"Content-Type": ctype})
    client = await proxy.exchange(token_flow(), upstream)
    for text in _lenient_strings(client.content or b""):
        assert token not in text
        assert list(jws.find_jws(text)) == []


@pytest.mark.parametrize("ctype", ["application/json", "", "text/plain"])
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-be"])
async def test_utf16_token_response_does_not_carry_the_jwt_out(
    proxy: Proxy, encoding: str, ctype: str
) -> None:
    # JSON in UTF-16/32 is not UTF-8 (or is "UTF-8" full of NULs, which without a JSON content type passed for
    # a one-field form): the scan for a JWS must not read it as UTF-8 only, where the NUL bytes break up the
    # token, or a client that detects the encoding (requests' .json() does) reads the whole access token.
    token = make_jwt()
    raw = json.dumps({"access_token": token, "token_type": "Bearer", "x": "a=b"}).encode(encoding)
    client = await proxy.exchange(token_flow(), json_response(None, raw=raw, headers={"Content-Type": ctype}))
    for enc in ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"):
        assert token not in (client.content or b"").decode(enc, "ignore"), enc


@pytest.mark.parametrize(
    ("ctype", "raw"),
    [
        ("text/html", b"<html>Service temporarily down</html>"),
        ("application/json", b"[1, 2, 3]"),
        ("application/json", b'{"a": 1, "a": 2}'),
        ("application/octet-stream", bytes(range(256))),
        ("application/json", b'{"n": 1' + b"0" * 5000 + b"}"),
        ("application/json", b"[" * 50_000 + b"]" * 50_000),
        ("application/json", b'{"access_token": "opaque-token", "token_type": "Bear'),
    ],
)
async def test_unparseable_200_is_refused_even_without_a_jws(proxy: Proxy, ctype: str, raw: bytes) -> None:
    """A client may read more into an answer than the proxy could (a body cut short): it never passes."""
    upstream = json_response(None, raw=raw, headers={"Content-Type": ctype})
    client = await proxy.exchange(token_flow(), upstream)
    assert_error(client, 502, "server_error")


async def test_an_empty_200_passes(proxy: Proxy) -> None:
    upstream = json_response(None, raw=b"", headers={"Content-Type": "application/json"})
    client = await proxy.exchange(token_flow(), upstream)
    assert client.status_code == 200
    assert client.raw_content == b""


async def test_oversize_response_is_refused(proxy: Proxy) -> None:
    proxy.configure(splittoken_max_body=200)
    fields = token_fields()
    _, client = await login(proxy, fields)
    assert_error(client, 502, "server_error")
    assert "too large" in client.text
    assert proxy.records == 0
    assert_no_jwt(client.content or b"", fields["access_token"])


async def test_oversize_after_decompression_is_refused(proxy: Proxy) -> None:
    proxy.configure(splittoken_max_body=4096)
    fields = token_fields(padding=" " * 100_000)
    upstream = json_response(fields)
    upstream.encode("gzip")
    assert len(upstream.raw_content or b"") < 4096
    client = await proxy.exchange(token_flow(), upstream)
    assert_error(client, 502, "server_error")
    assert proxy.records == 0


async def test_second_gzip_member_cannot_smuggle_a_jwt(proxy: Proxy) -> None:
    # The proxy (like mitmproxy's decoder) reads the first gzip member only; Python's gzip and urllib3 read
    # them all. The first member alone is unparseable and holds no JWS, so it used to pass unchanged.
    token = make_jwt()
    raw = gzip.compress(b'{"access_token": "opaque", "note": "') + gzip.compress(f'{token}"}}'.encode())
    upstream = json_response(None, raw=b"")
    upstream.headers["Content-Encoding"] = "gzip"
    upstream.raw_content = raw  # as sent: Response.make would gzip it once more
    assert token.encode() in gzip.decompress(raw)  # what a Python client would read
    client = await proxy.exchange(token_flow(), upstream)
    assert_error(client, 502, "server_error")
    assert_no_jwt(client.content or b"", token)


async def test_broken_content_encoding_is_refused(proxy: Proxy) -> None:
    upstream = json_response(token_fields())
    upstream.headers["Content-Encoding"] = "gzip"  # claims gzip, is not
    client = await proxy.exchange(token_flow(), upstream)
    assert client.status_code == 502
    assert proxy.records == 0


async def test_non_string_refresh_token_is_refused(proxy: Proxy) -> None:
    fields = token_fields(refresh_token={"value": "x"})
    _, client = await login(proxy, fields)
    assert_error(client, 502, "server_error")
    assert proxy.records == 0


async def test_token_route_in_reverse_mode_is_not_an_api_route(proxy: Proxy) -> None:
    fields = token_fields()
    flow = token_flow(url="http://idp.example/token", mode=REVERSE_IDP)
    client = await proxy.exchange(flow, json_response(fields))
    assert body_of(client)["access_token"] == sig(fields["access_token"])


async def test_store_write_failure_on_token_route_is_503(proxy: Proxy, monkeypatch: Any) -> None:
    assert proxy.addon.vault
    monkeypatch.setattr(proxy.addon.vault.store, "put", store_down)
    fields = token_fields()
    _, client = await login(proxy, fields)
    body = assert_error(client, 503, "temporarily_unavailable")
    assert client.headers["Retry-After"].isdigit()
    raw = client.content or b""
    assert_no_jwt(raw, fields["access_token"], fields["id_token"])
    assert fields["refresh_token"].encode() not in raw
    assert sig(fields["access_token"]) not in json.dumps(body)  # no handle either


async def test_unexpected_exception_in_token_response_is_502(proxy: Proxy, monkeypatch: Any) -> None:
    def boom(*_: Any, **__: Any) -> Any:
        raise RuntimeError("eyJhbGciOiJSUzI1NiJ9 leaked in a message")

    monkeypatch.setattr(policy, "expiry", boom)
    fields = token_fields()
    _, client = await login(proxy, fields)
    assert_error(client, 502, "server_error")
    assert_no_jwt(client.content or b"", fields["access_token"], fields["id_token"])
    assert proxy.records == 0


async def test_token_route_is_never_streamed(proxy: Proxy) -> None:
    flow = token_flow()
    flow.request.stream = True
    flow.request.headers["Accept-Encoding"] = "gzip, br"
    proxy.addon.requestheaders(flow)
    assert flow.request.stream is False
    assert flow.request.headers["Accept-Encoding"] == "identity"
    flow.response = json_response(token_fields())
    proxy.addon.responseheaders(flow)
    assert not flow.response.stream and flow.live


async def test_a_token_response_mitmproxy_streams_is_cut_off(proxy: Proxy) -> None:
    """Larger than stream_large_bodies (which configure keeps at or above splittoken_max_body): mitmproxy
    would stream it to the client before the response hook could split it."""
    flow = token_flow()
    proxy.addon.requestheaders(flow)
    flow.response = json_response(token_fields())
    flow.response.stream = True
    proxy.addon.responseheaders(flow)
    assert flow.error is not None and not flow.live  # killed: the client gets no byte of it


async def test_a_jws_in_a_token_response_header_is_refused(proxy: Proxy) -> None:
    fields = token_fields()
    _, client = await login(proxy, fields, headers={"X-Debug-Token": fields["access_token"]})
    assert_error(client, 502, "server_error")
    assert_no_jwt(client.content or b"", fields["access_token"])


async def test_an_error_response_holding_a_jws_is_refused(proxy: Proxy) -> None:
    fields = token_fields()
    error = {"error": "invalid_request", "error_description": f"bad token {fields['access_token']}"}
    _, client = await login(proxy, error, status=400)
    assert_error(client, 502, "server_error")


async def test_handles_are_bound_to_the_token_endpoint_name_not_its_address(proxy: Proxy) -> None:
    """Transparent mode: the provider answers from several addresses under one verified TLS name."""

    def via(address: str, sni: str, flow: http.HTTPFlow) -> http.HTTPFlow:
        flow.request.url = f"https://{address}{flow.request.path}"
        flow.request.headers["Host"] = "idp.example"
        flow.client_conn.sni = sni
        return flow

    fields = token_fields()
    client = await proxy.exchange(via("203.0.113.1", "idp.example", token_flow()), json_response(fields))
    handle = body_of(client)["refresh_token"]
    elsewhere = via("203.0.113.2", "idp.example", refresh_flow(handle))
    assert await proxy.request(elsewhere)
    assert fields["refresh_token"] in (elsewhere.request.get_text() or "")
    await proxy.respond(elsewhere, json_response(token_fields(refresh_token=fields["refresh_token"])))
    impostor = via("198.51.100.9", "evil.example", refresh_flow(handle))
    await assert_refused(proxy, impostor, 400, "invalid_grant")


async def test_a_known_authorization_servers_answers_are_judged_as_token_answers(proxy: Proxy) -> None:
    """Issue 10, property 1, the second line behind the filters: once the token endpoint has answered with
    tokens, a 2xx answer from beside it, on a path no filter foresaw, is judged as a token answer: the client
    gets handles, never the JWT or the refresh token."""
    _, client = await login(proxy)
    handle = body_of(client)["access_token"]
    beside = "http://idp.example/realms/demo/protocol/openid-connect/token-v2"
    flow = api_flow(f"Bearer {handle}", url=beside, mode=REVERSE_IDP)
    assert await proxy.request(flow)  # joined: an API call to the authorization server
    fields = token_fields()
    del fields["id_token"]
    answer = await proxy.respond(flow, json_response(fields))
    assert answer.status_code == 200, answer.text
    body = body_of(answer)
    assert body["access_token"] == sig(fields["access_token"])
    assert is_handle(body["refresh_token"])
    assert_no_jwt(answer.content or b"", fields["access_token"])
    assert fields["refresh_token"].encode() not in (answer.content or b"")


async def test_a_known_authorization_servers_pages_holding_a_jwt_are_refused(proxy: Proxy) -> None:
    """... and an answer there that is no token answer but holds a JWS (an HTML page) is refused."""
    _, client = await login(proxy)
    handle = body_of(client)["access_token"]
    beside = "http://idp.example/realms/demo/protocol/openid-connect/login-status"
    flow = api_flow(f"Bearer {handle}", url=beside, mode=REVERSE_IDP)
    assert await proxy.request(flow)
    leaked = make_jwt(sub="bob")
    page = http.Response.make(200, f"<p>{leaked}</p>".encode(), {"Content-Type": "text/html"})
    answer = await proxy.respond(flow, page)
    assert_error(answer, 502, "server_error")
    assert_no_jwt(answer.content or b"", leaked)


async def test_a_known_authorization_servers_streamed_answers_are_cut_off(proxy: Proxy) -> None:
    """... and one mitmproxy would stream there is cut off, as a token endpoint's is: streamed, it would
    reach the client before it is judged."""
    _, client = await login(proxy)
    handle = body_of(client)["access_token"]
    beside = "http://idp.example/realms/demo/protocol/openid-connect/token-v2"
    flow = api_flow(f"Bearer {handle}", url=beside, mode=REVERSE_IDP)
    assert await proxy.request(flow)
    flow.response = json_response(token_fields())
    flow.response.stream = True
    proxy.addon.responseheaders(flow)
    assert flow.error is not None and not flow.live
