"""routing.py: routes are judged on the path as the server reads it, and tokens go only where they came from.

Hypothesis throws path spellings at the classifier and encodings at the leak scanner (policy): no spelling a
lenient server serves as the token endpoint escapes the token route, and no reading of a JWS hides it.
"""

from __future__ import annotations

import json
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oauth_flows import IDP, REVERSE_IDP, make_jwt, token_flow
from splittoken import leaks, options, routing
from splittoken.bodies import TokenBody
from splittoken.settings import parse_settings

TOKEN_PATH = "/realms/demo/protocol/openid-connect/token"
OPTION_VALUES = {option.name: option.default for option in options.OPTIONS} | {
    "confdir": "~",
    "stream_large_bodies": None,
}
DEFAULTS = parse_settings(OPTION_VALUES)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (TOKEN_PATH, TOKEN_PATH),
        (TOKEN_PATH + "/", TOKEN_PATH),
        (TOKEN_PATH + "//", TOKEN_PATH),
        (TOKEN_PATH + "/.", TOKEN_PATH),
        (TOKEN_PATH + "/x/..", TOKEN_PATH),
        (TOKEN_PATH + "/%2e", TOKEN_PATH),
        (TOKEN_PATH.replace("/token", "/x/%2E%2E/token"), TOKEN_PATH),
        (TOKEN_PATH.replace("/token", "/%74oken"), TOKEN_PATH),
        (TOKEN_PATH.replace("/token", "%2Ftoken"), TOKEN_PATH),
        (TOKEN_PATH + ";jsessionid=x", TOKEN_PATH),
        (TOKEN_PATH + "#x", TOKEN_PATH),
        (TOKEN_PATH + "?a=/b/../c#x", TOKEN_PATH + "?a=/b/../c"),
        ("/../../token", "/token"),
        ("", "/"),
    ],
)
def test_normalised_path(target: str, expected: str) -> None:
    assert routing.normalised_path(target) == expected


_SEGMENT_SPELLINGS = st.sampled_from(["", "/.", "/./", "/x/..", "/%2e", "/%2E/", "/y/%2e%2e", "//", "/;p=1"])


def _spell(path: str, data: st.DataObject) -> str:
    """``path`` as a lenient server still serves it: noise between segments, escaped letters, a tail."""
    out = []
    for segment in path.strip("/").split("/"):
        out.append(data.draw(_SEGMENT_SPELLINGS))
        letters = [
            f"%{ord(c):02x}" if data.draw(st.booleans()) else c for c in segment
        ]  # percent-escaped unreserved characters mean the same
        out.append("/" + "".join(letters))
    tail = data.draw(st.sampled_from(["", "/", "//", "/.", ";a=b", "#frag", "?q=1", "?next=/x#y"]))
    return "".join(out) + tail


@given(st.data())
def test_every_spelling_of_the_token_path_is_the_token_route(data: st.DataObject) -> None:
    target = _spell(TOKEN_PATH, data)
    assert routing.normalised_path(target).partition("?")[0] == TOKEN_PATH
    flow = token_flow(url="http://idp.example" + target, mode=REVERSE_IDP)
    flow.request.path = target  # exactly as sent, unnormalised
    assert routing.classify(flow, DEFAULTS).route == "token"
    assert flow.request.path == target, "the flow goes upstream as the client spelt it"


@given(st.text(alphabet="/.%;#?ab2eE", max_size=40))
def test_normalised_paths_are_stable(target: str) -> None:
    once = routing.normalised_path(target)
    assert once.startswith("/")
    assert routing.normalised_path(once) == once or "%" in urllib.parse.unquote(once.partition("?")[0])


def test_a_post_no_filter_names_may_still_be_a_token_request() -> None:
    """In reverse mode a POST that no filter names is a token request candidate, judged by its body: a token
    path spelling no filter foresaw (``/token.json``) is no way around the token route. Other methods, and
    requests in other modes, stay no route of ours."""
    scoped = parse_settings(OPTION_VALUES | {"splittoken_api_filter": '~u "^http://api\\.example/"'})
    flow = token_flow(url=f"{IDP}/oauth/token.json", mode=REVERSE_IDP)
    classified = routing.classify(flow, scoped)
    assert (classified.route, classified.fallback, classified.by_body) == ("token", None, True)
    flow.request.method = "GET"
    assert routing.classify(flow, scoped).route is None
    assert routing.classify(token_flow(url=f"{IDP}/oauth/token.json"), scoped).route is None


@pytest.mark.parametrize(
    ("fields", "authorization", "expected"),
    [
        ({"grant_type": "password", "client_id": "c"}, "", True),
        ({"grant_type": "client_credentials"}, "Basic Yzpz", True),
        ({"grant_type": "client_credentials", "client_assertion": "x"}, "", True),
        ({"grant_type": "client_credentials", "token": "x"}, "", False),  # no client: an API call
        ({"grant_type": "client_credentials"}, "Bearer handle", False),
        ({"x": "1"}, "Bearer handle", False),
        ({"grant_type": ["not", "a", "string"], "client_id": "c"}, "", False),
    ],
)
def test_a_token_request_has_a_grant_type_and_a_client(
    fields: dict, authorization: str, expected: bool
) -> None:
    assert routing.is_endpoint_request("token", TokenBody(fields), authorization) is expected


def test_revocation_needs_a_token_and_a_client() -> None:
    assert routing.is_endpoint_request("revoke", TokenBody({"token": "t", "client_id": "c"}), "")
    assert not routing.is_endpoint_request("revoke", TokenBody({"token": "t"}), "")
    assert not routing.is_endpoint_request("revoke", None, "Basic Yzpz")


def test_refresh_handles_work_only_at_their_token_endpoint() -> None:
    issuer = "http://idp.example:80/realms/demo/protocol/openid-connect/token"
    here = token_flow(url=f"{IDP}/token/")
    assert routing.issued_here(issuer, here)
    assert not routing.issued_here(
        issuer, token_flow(url="http://idp.example/realms/evil/protocol/openid-connect/token")
    )
    assert not routing.issued_here(issuer, token_flow(url="http://idp.example/api/oauth/token"))
    assert routing.issued_here("http://idp.example:80", here)  # records from before endpoints were bound


def test_real_tokens_go_only_where_every_server_reads_the_token_endpoint() -> None:
    """``..%2F``: a dot segment to a server that decodes ``%2F`` first, a plain name to one that keeps it in
    its segment (and routes the request under /api/). Without the second reading the real refresh token, or
    the JWT for an introspection, was swapped into a request that such a server hands to the API."""
    issuer = "http://idp.example:80/realms/demo/protocol/openid-connect/token"
    target = "http://idp.example/api/x/..%2F..%2F..%2Frealms/demo/protocol/openid-connect/token"
    assert not routing.issued_here(issuer, token_flow(url=target))
    assert not routing.may_revoke_here(issuer, token_flow(url=target + "/introspect"))
    assert routing.may_revoke_here(issuer, token_flow(url=f"{IDP}/revoke"))


def test_revocation_goes_only_beside_the_token_endpoint() -> None:
    issuer = "http://idp.example:80/realms/demo/protocol/openid-connect/token"
    assert routing.may_revoke_here(issuer, token_flow(url=f"{IDP}/revoke"))
    assert routing.may_revoke_here(issuer, token_flow(url=f"{IDP}/./revoke/"))
    assert not routing.may_revoke_here(issuer, token_flow(url="http://idp.example/api/session/revoke"))
    assert not routing.may_revoke_here(
        issuer, token_flow(url="http://idp.example/realms/evil/protocol/openid-connect/revoke")
    )
    assert not routing.may_revoke_here(
        issuer, token_flow(url="http://other.example/realms/demo/protocol/openid-connect/revoke")
    )


def test_authorization_servers_are_learnt_from_their_token_endpoints() -> None:
    servers = routing.AuthorizationServers()

    def served(url: str) -> bool:
        return servers.serve(routing.endpoint(token_flow(url=url)))

    assert not served(f"{IDP}/userinfo")
    servers.learn("http://idp.example:80/realms/demo/protocol/openid-connect/token")
    assert served(f"{IDP}/userinfo")
    assert served(f"{IDP}/x/../token/")
    assert not served("http://idp.example/api/orders")


# ---------------------------------------------------------------------------------------------------------
# The leak scanner: a JWS is found whatever it is wrapped in

JWT = make_jwt(scope="openid")


def _percent_all(text: str) -> str:
    return "".join(f"%{b:02X}" for b in text.encode())


_WRAPPINGS = st.sampled_from(
    [
        lambda t: t,
        lambda t: json.dumps({"note": t}),
        lambda t: json.dumps({"note": t}).replace(t[:5], "".join(f"\\u{ord(c):04x}" for c in t[:5])),
        lambda t: urllib.parse.quote(t, safe=""),
        _percent_all,
        lambda t: urllib.parse.urlencode({"a": t}),
        lambda t: t.rpartition(".")[0],  # no signature: the claims are still readable
        lambda t: "garbage." + t.split(".")[1] + ".sig",  # a payload behind a header that is not JSON
        lambda t: t[: len(t.partition(".")[0]) + 30],  # cut short inside the payload
    ]
)


@given(
    _WRAPPINGS, st.text(alphabet=" \n\"'<>=:;,x", max_size=8), st.text(alphabet=" \n\"'<>=:;,x", max_size=8)
)
def test_a_jws_is_found_however_it_is_wrapped(wrap: object, before: str, after: str) -> None:
    text = before + wrap(JWT) + after  # type: ignore[operator]
    assert leaks.text_holds_jws(text)
    assert leaks.holds_jws(text.encode())


_NAMES = st.lists(
    st.sampled_from(["api", "demo", "com", "v1", "www", "org", "index", "html", "tar", "gz", "keycloak"]),
    min_size=2,
    max_size=6,
).map(".".join)


@given(_NAMES)
def test_dotted_names_are_not_tokens(text: str) -> None:
    """Host names, versions, file names are no tokens. (The scan is loose on purpose, to stay linear: two
    consecutive segments that merely open with "{" when decoded, such as "ex…" or "ey…", count.)"""
    assert not leaks.text_holds_jws(text)
