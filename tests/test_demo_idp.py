"""The demo identity provider (scripts/demo_idp.py, the HTTP side, over idp_core.py, idp_model.py and
idp_crypto.py): the pure parts directly, everything else as a real process driven over HTTP."""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

import idp_crypto
import idp_model
from procs import ManagedProcess
from stack import start_idp

CLIENT = ("demo-client", "demo-secret")
TIMEOUT = 10


# The fixture idp (conftest.py): one demo identity provider, default flags, per module.


@pytest.fixture(scope="module")
def variant() -> Iterator[ManagedProcess]:
    flags = ["--realm", "other", "--access-ttl", "60", "--refresh-ttl", "120", "--no-rotate"]
    with start_idp(*flags, "--refuse-access-revoke", "--verbose") as proc:
        yield proc


def oidc(idp: ManagedProcess, realm: str = "demo") -> str:
    return f"{idp.url}/realms/{realm}/protocol/openid-connect"


def token(idp: ManagedProcess, realm: str = "demo", auth: Any = CLIENT, **form: str) -> requests.Response:
    return requests.post(f"{oidc(idp, realm)}/token", data=form, auth=auth, timeout=TIMEOUT)


def login(idp: ManagedProcess, user: str = "alice", realm: str = "demo", **form: str) -> dict[str, Any]:
    answer = token(idp, realm, grant_type="password", username=user, password=f"{user}-pw", **form)
    assert answer.status_code == 200, answer.text
    return answer.json()


def refresh(idp: ManagedProcess, refresh_token: str, realm: str = "demo") -> requests.Response:
    return token(idp, realm, grant_type="refresh_token", refresh_token=refresh_token)


def revoke(idp: ManagedProcess, realm: str = "demo", auth: Any = CLIENT, **form: str) -> requests.Response:
    return requests.post(f"{oidc(idp, realm)}/revoke", data=form, auth=auth, timeout=TIMEOUT)


def userinfo(idp: ManagedProcess, access_token: str | None, realm: str = "demo") -> requests.Response:
    headers = {"Authorization": f"Bearer {access_token}"} if access_token else {}
    return requests.get(f"{oidc(idp, realm)}/userinfo", headers=headers, timeout=TIMEOUT)


def claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def stats(proc: ManagedProcess) -> dict[str, Any]:
    return requests.get(f"{proc.url}/_stats", timeout=TIMEOUT).json()


def reset(proc: ManagedProcess) -> None:
    requests.post(f"{proc.url}/_reset", timeout=TIMEOUT).raise_for_status()


def assert_oauth_error(answer: requests.Response, status: int, error: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json()["error"] == error
    assert answer.json()["error_description"]


# --- identity provider: discovery and keys -------------------------------------------------------------


def test_discovery_uses_the_host_header(idp: ManagedProcess) -> None:
    url = f"{idp.url}/realms/demo/.well-known/openid-configuration"
    direct = requests.get(url, timeout=TIMEOUT).json()
    assert direct["issuer"] == f"{idp.url}/realms/demo"
    assert direct["token_endpoint"] == f"{oidc(idp)}/token"
    assert direct["revocation_endpoint"] == f"{oidc(idp)}/revoke"
    assert direct["jwks_uri"] == f"{oidc(idp)}/certs"
    assert direct["userinfo_endpoint"] == f"{oidc(idp)}/userinfo"
    assert set(direct["grant_types_supported"]) == {
        "authorization_code",
        "client_credentials",
        "password",
        "refresh_token",
    }
    proxied = requests.get(url, headers={"Host": "proxy.example:8443"}, timeout=TIMEOUT).json()
    assert proxied["token_endpoint"] == "http://proxy.example:8443/realms/demo/protocol/openid-connect/token"


def test_jwks_verifies_client_credentials_token(idp: ManagedProcess) -> None:
    answer = token(idp, grant_type="client_credentials")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.headers["Pragma"] == "no-cache"
    body = answer.json()
    assert "refresh_token" not in body and "id_token" not in body
    assert body["token_type"] == "Bearer" and body["expires_in"] == 300 and body["refresh_expires_in"] == 0
    assert body["not-before-policy"] == 0 and body["session_state"] and body["scope"] == "profile email"

    jwks = requests.get(f"{oidc(idp)}/certs", timeout=TIMEOUT).json()
    (jwk,) = jwks["keys"]
    assert (jwk["kty"], jwk["use"], jwk["alg"]) == ("RSA", "sig", "RS256")
    header = jwt.get_unverified_header(body["access_token"])
    assert header == {"alg": "RS256", "kid": jwk["kid"], "typ": "JWT"}
    issuer = f"{idp.url}/realms/demo"
    access = jwt.decode(
        body["access_token"], jwt.PyJWK(jwk), algorithms=["RS256"], audience="account", issuer=issuer
    )
    assert access["sub"] == "service-account-demo-client" and access["azp"] == "demo-client"
    assert access["exp"] - access["iat"] == 300 and access["scope"] == "profile email"
    assert uuid.UUID(access["jti"])


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_client_authentication_methods(idp: ManagedProcess, method: str) -> None:
    if method == "client_secret_basic":
        answer = token(idp, grant_type="client_credentials")
    else:
        form = {"client_id": CLIENT[0], "client_secret": CLIENT[1]}
        answer = token(idp, auth=None, grant_type="client_credentials", **form)
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    ("auth", "form"),
    [
        (("demo-client", "wrong"), {}),
        (None, {}),
        (None, {"client_id": "nobody", "client_secret": "demo-secret"}),
        (None, {"client_id": "demo-client"}),
        (CLIENT, {"client_id": "someone-else"}),
    ],
)
def test_bad_client_is_401(idp: ManagedProcess, auth: Any, form: dict[str, str]) -> None:
    answer = token(idp, auth=auth, grant_type="client_credentials", **form)
    assert_oauth_error(answer, 401, "invalid_client")
    assert answer.headers["WWW-Authenticate"] == 'Basic realm="demo"'


# --- identity provider: grants ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "roles", "tenant"), [("alice", ["admin", "user"], "acme"), ("bob", ["user"], "globex")]
)
def test_password_grant(idp: ManagedProcess, user: str, roles: list[str], tenant: str) -> None:
    body = login(idp, user, scope="openid")
    access = claims(body["access_token"])
    assert access["email"] == f"{user}@example.com" and access["preferred_username"] == user
    assert access["realm_access"] == {"roles": roles} and access["tenant"] == tenant
    assert access["scope"] == "openid profile email" == body["scope"]
    assert access["sid"] == body["session_state"]
    refresh_claims = claims(body["refresh_token"])
    assert jwt.get_unverified_header(body["refresh_token"])["alg"] == "HS256"
    assert refresh_claims["typ"] == "Refresh" and refresh_claims["sub"] == access["sub"]
    assert refresh_claims["exp"] - refresh_claims["iat"] == 1800 == body["refresh_expires_in"]
    assert refresh_claims["sid"] == body["session_state"] and refresh_claims["jti"]
    jwk = requests.get(f"{oidc(idp)}/certs", timeout=TIMEOUT).json()["keys"][0]
    id_token = jwt.decode(body["id_token"], jwt.PyJWK(jwk), algorithms=["RS256"], audience="demo-client")
    assert id_token["sub"] == access["sub"] and id_token["email"] == f"{user}@example.com"


def test_password_grant_without_openid_has_no_id_token(idp: ManagedProcess) -> None:
    assert "id_token" not in login(idp)


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({"grant_type": "password", "username": "alice", "password": "nope"}, 400, "invalid_grant"),
        ({"grant_type": "password", "username": "mallory", "password": "x"}, 400, "invalid_grant"),
        ({"grant_type": "authorization_code", "code": "x"}, 400, "unsupported_grant_type"),
        ({}, 400, "invalid_request"),
        ({"grant_type": "refresh_token"}, 400, "invalid_request"),
        ({"grant_type": "client_credentials", "access_ttl": "-1"}, 400, "invalid_request"),
    ],
)
def test_token_errors(idp: ManagedProcess, form: dict[str, str], status: int, error: str) -> None:
    answer = token(idp, **form)
    assert_oauth_error(answer, status, error)
    assert answer.headers["Cache-Control"] == "no-store"


def test_repeated_parameter_is_invalid_request(idp: ManagedProcess) -> None:
    body = "grant_type=client_credentials&grant_type=password"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    answer = requests.post(f"{oidc(idp)}/token", data=body, headers=headers, auth=CLIENT, timeout=TIMEOUT)
    assert_oauth_error(answer, 400, "invalid_request")


def test_client_credentials_refresh_knob(idp: ManagedProcess) -> None:
    body = token(idp, grant_type="client_credentials", refresh="1").json()
    assert claims(body["refresh_token"])["sub"] == "service-account-demo-client"
    assert refresh(idp, body["refresh_token"]).status_code == 200


def test_ttl_and_pad_knobs(idp: ManagedProcess) -> None:
    body = token(idp, grant_type="client_credentials", access_ttl="2", pad="100000", refresh="1",
                 refresh_ttl="7").json()  # fmt: skip
    access = claims(body["access_token"])
    assert body["expires_in"] == 2 == access["exp"] - access["iat"]
    assert access["pad"] == "x" * 100_000
    assert body["refresh_expires_in"] == 7


def test_form_encoded_answer_on_request(idp: ManagedProcess) -> None:
    headers = {"Accept": "application/x-www-form-urlencoded"}
    form = {"grant_type": "password", "username": "bob", "password": "bob-pw"}
    answer = requests.post(f"{oidc(idp)}/token", data=form, headers=headers, auth=CLIENT, timeout=TIMEOUT)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/x-www-form-urlencoded"
    fields = {k: v for k, [v] in parse_qs(answer.text).items()}
    assert fields["token_type"] == "Bearer" and fields["expires_in"] == "300"
    assert claims(fields["access_token"])["preferred_username"] == "bob" and fields["refresh_token"]


# --- identity provider: refresh ------------------------------------------------------------------------


def test_refresh_rotates(idp: ManagedProcess) -> None:
    first = login(idp, scope="openid")
    second = refresh(idp, first["refresh_token"])
    assert second.status_code == 200, second.text
    body = second.json()
    assert body["refresh_token"] != first["refresh_token"] and "id_token" in body
    assert claims(body["access_token"])["sub"] == claims(first["access_token"])["sub"]
    assert body["session_state"] == first["session_state"] and body["scope"] == first["scope"]
    assert_oauth_error(refresh(idp, first["refresh_token"]), 400, "invalid_grant")  # used once already
    assert refresh(idp, body["refresh_token"]).status_code == 200


@pytest.mark.parametrize("kind", ["garbage", "access_token", "expired"])
def test_refresh_rejects_bad_tokens(idp: ManagedProcess, kind: str) -> None:
    body = login(idp, refresh_ttl="0") if kind == "expired" else login(idp)
    candidate = {"garbage": "not.a.jwt", "access_token": body["access_token"]}.get(
        kind, body["refresh_token"]
    )
    assert_oauth_error(refresh(idp, candidate), 400, "invalid_grant")


def test_concurrent_refreshes_overlap_and_one_wins() -> None:
    delay = 0.5
    with start_idp("--refresh-delay", str(delay)) as slow:
        refresh_token = login(slow)["refresh_token"]
        answers: list[requests.Response] = []

        def run() -> None:
            answers.append(refresh(slow, refresh_token))

        threads = [threading.Thread(target=run) for _ in range(2)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        elapsed = time.monotonic() - started
        assert delay <= elapsed < 2 * delay  # both were in flight together
        assert sorted(a.status_code for a in answers) == [200, 400]
        assert stats(slow)["token"] == {
            "authorization_code": 0,
            "client_credentials": 0,
            "password": 1,
            "refresh_token": 2,
            "errors": 1,
        }


# --- identity provider: revocation and userinfo -----------------------------------------------------------


def test_revoke_refresh_token(idp: ManagedProcess) -> None:
    body = login(idp)
    answer = revoke(idp, token=body["refresh_token"], token_type_hint="refresh_token")
    assert answer.status_code == 200 and answer.content == b""
    assert answer.headers["Content-Length"] == "0"
    assert claims(body["refresh_token"])["jti"] in stats(idp)["revoked_tokens"]
    assert_oauth_error(refresh(idp, body["refresh_token"]), 400, "invalid_grant")


def test_revoke_access_token(idp: ManagedProcess) -> None:
    access_token = login(idp)["access_token"]
    assert userinfo(idp, access_token).status_code == 200
    assert revoke(idp, token=access_token).status_code == 200
    assert claims(access_token)["jti"] in stats(idp)["revoked_tokens"]
    assert_oauth_error(userinfo(idp, access_token), 401, "invalid_token")


def test_revoke_edge_cases(idp: ManagedProcess) -> None:
    assert revoke(idp, token="whatever-this-is").status_code == 200  # RFC 7009 §2.2
    assert_oauth_error(revoke(idp), 400, "invalid_request")
    assert_oauth_error(revoke(idp, auth=("demo-client", "wrong"), token="x"), 401, "invalid_client")
    # client_secret_post works for revocation too
    form = {"client_id": CLIENT[0], "client_secret": CLIENT[1], "token": login(idp)["refresh_token"]}
    assert revoke(idp, auth=None, **form).status_code == 200


def test_userinfo(idp: ManagedProcess) -> None:
    body = login(idp, "bob", scope="openid")
    answer = userinfo(idp, body["access_token"])
    assert answer.status_code == 200
    info = answer.json()
    assert info["sub"] == claims(body["access_token"])["sub"]
    assert (info["email"], info["preferred_username"], info["tenant"]) == ("bob@example.com", "bob", "globex")
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    posted = requests.post(f"{oidc(idp)}/userinfo", headers=bearer, timeout=TIMEOUT)
    assert posted.json() == info


@pytest.mark.parametrize("kind", ["missing", "garbage", "expired", "id_token", "refresh_token"])
def test_userinfo_rejects(idp: ManagedProcess, kind: str) -> None:
    body = login(idp, scope="openid", access_ttl="0" if kind == "expired" else "300")
    presented = {"missing": None, "garbage": "a.b.c", "expired": body["access_token"]}.get(
        kind, body.get(kind)
    )
    answer = userinfo(idp, presented)
    assert_oauth_error(answer, 401, "invalid_token")
    assert answer.headers["WWW-Authenticate"].startswith('Bearer realm="demo", error="invalid_token"')


# --- identity provider: counters, routing, variants ------------------------------------------------------


def test_stats_count_what_reached_the_idp(idp: ManagedProcess) -> None:
    reset(idp)
    assert stats(idp) == {
        "token": {
            "authorization_code": 0,
            "client_credentials": 0,
            "password": 0,
            "refresh_token": 0,
            "errors": 0,
        },
        "revoke": 0,
        "introspect": 0,
        "revoked_tokens": [],
        "userinfo": 0,
    }
    body = login(idp)
    token(idp, grant_type="client_credentials")
    token(idp, grant_type="client_credentials", auth=("demo-client", "bad"))
    refresh(idp, body["refresh_token"])
    refresh(idp, body["refresh_token"])
    token(idp, grant_type="implicit")
    revoke(idp, token=body["access_token"])
    userinfo(idp, body["access_token"])
    assert stats(idp) == {
        "token": {
            "authorization_code": 0,
            "client_credentials": 2,
            "password": 1,
            "refresh_token": 2,
            "errors": 3,
        },
        "revoke": 1,
        "introspect": 0,
        "revoked_tokens": [claims(body["access_token"])["jti"]],
        "userinfo": 1,
    }
    reset(idp)
    assert stats(idp)["token"]["password"] == 0 and stats(idp)["revoked_tokens"] == []


def test_unknown_path_and_wrong_method(idp: ManagedProcess) -> None:
    answer = requests.get(f"{idp.url}/nowhere", timeout=TIMEOUT)
    assert_oauth_error(answer, 404, "not_found")
    assert requests.get(f"{oidc(idp, 'other')}/certs", timeout=TIMEOUT).status_code == 404
    answer = requests.get(f"{oidc(idp)}/token", timeout=TIMEOUT)
    assert answer.status_code == 405 and answer.headers["Allow"] == "POST"


def test_keep_alive_is_fast(idp: ManagedProcess) -> None:
    conn = http.client.HTTPConnection(urlsplit(idp.url).netloc, timeout=TIMEOUT)
    conn.request("GET", "/_stats")
    conn.getresponse().read()
    sock = conn.sock
    started = time.monotonic()
    for _ in range(50):
        conn.request("GET", "/realms/demo/protocol/openid-connect/certs")
        answer = conn.getresponse()
        assert answer.status == 200 and json.loads(answer.read())["keys"]
    assert conn.sock is sock  # one connection throughout
    assert time.monotonic() - started < 1.0  # ~40 ms each with Nagle on
    conn.close()


def test_variant_no_rotate_realm_and_refused_access_revoke(variant: ManagedProcess) -> None:
    body = login(variant, realm="other")
    access = claims(body["access_token"])
    assert access["iss"] == f"{variant.url}/realms/other" and body["expires_in"] == 60
    for _ in range(2):  # --no-rotate: the same refresh token, again and again
        again = refresh(variant, body["refresh_token"], realm="other")
        assert again.status_code == 200 and again.json()["refresh_token"] == body["refresh_token"]
        assert 0 < again.json()["refresh_expires_in"] <= 120
    refused = revoke(variant, realm="other", token=body["access_token"])
    assert_oauth_error(refused, 400, "unsupported_token_type")
    assert userinfo(variant, body["access_token"], realm="other").status_code == 200
    assert revoke(variant, realm="other", token=body["refresh_token"]).status_code == 200
    assert_oauth_error(refresh(variant, body["refresh_token"], realm="other"), 400, "invalid_grant")
    assert '"POST /realms/other/protocol/openid-connect/token HTTP/1.1" 200' in variant.output()  # --verbose


# --- authorization code flow with PKCE (public client demo-spa) -----------------------------------------

SPA = "demo-spa"
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"  # RFC 7636 Appendix B
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
REDIRECT = "http://127.0.0.1:4200/callback"
AUTHORIZATION_REQUEST = {
    "client_id": SPA,
    "redirect_uri": REDIRECT,
    "response_type": "code",
    "scope": "openid",
    "state": "st-1",
    "nonce": "n-1",
    "code_challenge": CHALLENGE,
    "code_challenge_method": "S256",
}


def authorize(idp: ManagedProcess, **query: str | None) -> requests.Response:
    """The authorization request, with ``query`` changing (None: dropping) parameters."""
    params = {name: value for name, value in (AUTHORIZATION_REQUEST | query).items() if value is not None}
    return requests.get(f"{oidc(idp)}/auth", params=params, allow_redirects=False, timeout=TIMEOUT)


def redirected(answer: requests.Response, redirect_uri: str = REDIRECT) -> dict[str, str]:
    """The parameters of the authorization answer, which must go back to the client's redirect URI."""
    assert answer.status_code == 302, answer.text
    assert answer.headers["Cache-Control"] == "no-store"
    location = urlsplit(answer.headers["Location"])
    assert location._replace(query="").geturl() == redirect_uri.partition("?")[0]
    return {k: v for k, [v] in parse_qs(location.query).items()}


def code_of(idp: ManagedProcess, **query: str) -> str:
    return redirected(authorize(idp, **query))["code"]


def code_exchange(code: str, **changes: str | None) -> dict[str, str]:
    """The SPA's token request for ``code``, with ``changes`` (None: dropping a parameter)."""
    form = {"grant_type": "authorization_code", "code": code, "client_id": SPA, "redirect_uri": REDIRECT}
    form = form | {"code_verifier": VERIFIER} | changes
    return {name: value for name, value in form.items() if value is not None}


def spa_token(idp: ManagedProcess, form: dict[str, str], proof: str | None = None) -> requests.Response:
    """A public client's token request: no client authentication, a DPoP proof if given."""
    headers = {"DPoP": proof} if proof else {}
    return requests.post(f"{oidc(idp)}/token", data=form, headers=headers, timeout=TIMEOUT)


def spa_refresh(refresh_token: str) -> dict[str, str]:
    return {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": SPA}


def keys_of(idp: ManagedProcess) -> jwt.PyJWK:
    return jwt.PyJWK(requests.get(f"{oidc(idp)}/certs", timeout=TIMEOUT).json()["keys"][0])


def test_code_flow_with_pkce(idp: ManagedProcess) -> None:
    params = redirected(authorize(idp))
    assert params["state"] == "st-1" and params["iss"] == f"{idp.url}/realms/demo" and params["session_state"]
    answer = spa_token(idp, code_exchange(params["code"]))
    assert answer.status_code == 200, answer.text
    assert answer.headers["Cache-Control"] == "no-store"
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "openid profile email"
    assert body["session_state"] == params["session_state"]
    key = keys_of(idp)
    access = jwt.decode(body["access_token"], key, algorithms=["RS256"], audience="account")
    id_token = jwt.decode(body["id_token"], key, algorithms=["RS256"], audience=SPA)
    assert access["azp"] == SPA == id_token["azp"] and access["preferred_username"] == "alice"
    assert id_token["nonce"] == "n-1" and id_token["sub"] == access["sub"]
    assert claims(body["refresh_token"])["azp"] == SPA
    # The public client refreshes with its client_id alone, and its refresh tokens rotate.
    renewed = spa_token(idp, spa_refresh(body["refresh_token"]))
    assert renewed.status_code == 200, renewed.text
    assert renewed.json()["refresh_token"] != body["refresh_token"]
    assert "nonce" not in claims(renewed.json()["id_token"])
    assert_oauth_error(spa_token(idp, spa_refresh(body["refresh_token"])), 400, "invalid_grant")
    assert_oauth_error(spa_token(idp, code_exchange(params["code"])), 400, "invalid_grant")  # one use
    assert stats(idp)["token"]["authorization_code"] >= 2


def test_login_hint_picks_the_user_and_any_loopback_port_is_a_redirect_uri(idp: ManagedProcess) -> None:
    redirect_uri = "http://localhost:61234/app/?keep=1"
    params = redirected(authorize(idp, redirect_uri=redirect_uri, login_hint="bob"), redirect_uri)
    assert params["keep"] == "1"  # the redirect URI's own query stays (RFC 6749 §3.1.2)
    body = spa_token(idp, code_exchange(params["code"], redirect_uri=redirect_uri)).json()
    assert claims(body["access_token"])["preferred_username"] == "bob"


@pytest.mark.parametrize(
    "changes",
    [
        {"code_verifier": "x" * 43},  # another verifier
        {"code_verifier": VERIFIER[:-1] + "!"},  # not RFC 7636's alphabet
        {"code_verifier": None},
        {"redirect_uri": "http://127.0.0.1:4200/other"},
        {"code": "never-issued"},
    ],
)
def test_code_exchange_refusals(idp: ManagedProcess, changes: dict[str, str | None]) -> None:
    form = code_exchange(code_of(idp)) | changes
    form = {name: value for name, value in form.items() if value is not None}
    assert_oauth_error(spa_token(idp, form), 400, "invalid_grant")


def test_code_exchange_refusals_by_client(idp: ManagedProcess) -> None:
    # Only the public client has the code flow; it has no secret and no password grant.
    refused = spa_token(idp, code_exchange(code_of(idp), client_id="demo-client"))
    assert_oauth_error(refused, 401, "invalid_client")
    confidential = token(idp, **code_exchange(code_of(idp), client_id=None))
    assert_oauth_error(confidential, 400, "unsupported_grant_type")
    refused = spa_token(idp, code_exchange(code_of(idp), client_secret="guess"))
    assert_oauth_error(refused, 401, "invalid_client")
    spa_login = {"grant_type": "password", "username": "alice", "password": "alice-pw", "client_id": SPA}
    assert_oauth_error(spa_token(idp, spa_login), 400, "unsupported_grant_type")


@pytest.mark.parametrize(
    "query",
    [
        {"client_id": "demo-client"},
        {"client_id": "nobody"},
        {"redirect_uri": "http://evil.example/callback"},
        {"redirect_uri": "https://127.0.0.1:4200/callback"},
        {"redirect_uri": "http://127.0.0.1:4200/callback#fragment"},
        {"redirect_uri": "http://user@127.0.0.1:4200/callback"},
        {"redirect_uri": None},
    ],
)
def test_authorize_never_redirects_to_an_unregistered_uri(idp: ManagedProcess, query: dict[str, str]) -> None:
    answer = authorize(idp, **query)
    assert_oauth_error(answer, 400, "invalid_request")
    assert "Location" not in answer.headers


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ({"code_challenge": None}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": None}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"login_hint": "mallory"}, "access_denied"),
    ],
)
def test_authorize_errors_go_back_to_the_client(
    idp: ManagedProcess, query: dict[str, str], error: str
) -> None:
    params = redirected(authorize(idp, **query))
    assert params["error"] == error and params["error_description"] and params["state"] == "st-1"
    assert "code" not in params


# --- CORS -------------------------------------------------------------------------------------------------

PAGE = "http://127.0.0.1:4200"
DISCOVERY = "/realms/demo/.well-known/openid-configuration"
OIDC = "/realms/demo/protocol/openid-connect"


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", f"{OIDC}/token"), ("POST", f"{OIDC}/revoke"), ("GET", f"{OIDC}/certs"),
     ("GET", f"{OIDC}/userinfo"), ("GET", DISCOVERY)],
)  # fmt: skip
def test_cors_for_loopback_web_origins(idp: ManagedProcess, method: str, path: str) -> None:
    url = idp.url + path
    asks = {"Access-Control-Request-Method": method, "Access-Control-Request-Headers": "authorization,dpop"}
    preflight = requests.options(url, headers={"Origin": PAGE, **asks}, timeout=TIMEOUT)
    assert preflight.status_code == 200 and preflight.content == b""
    assert preflight.headers["Access-Control-Allow-Origin"] == PAGE
    assert method in preflight.headers["Access-Control-Allow-Methods"].split(", ")
    assert preflight.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type, DPoP"
    assert preflight.headers["Vary"] == "Origin"
    answer = requests.request(method, url, headers={"Origin": PAGE}, timeout=TIMEOUT)
    assert answer.headers["Access-Control-Allow-Origin"] == PAGE  # errors too: the page reads why
    assert answer.headers["Access-Control-Expose-Headers"] == "WWW-Authenticate"
    assert "Access-Control-Allow-Methods" not in answer.headers  # only a preflight gets those
    elsewhere = requests.request(method, url, headers={"Origin": "http://evil.example"}, timeout=TIMEOUT)
    assert "Access-Control-Allow-Origin" not in elsewhere.headers


@pytest.mark.parametrize("path", [f"{OIDC}/auth", f"{OIDC}/token/introspect", "/_stats"])
def test_no_cors_where_a_browser_app_does_not_fetch(idp: ManagedProcess, path: str) -> None:
    asks = {"Origin": PAGE, "Access-Control-Request-Method": "POST"}
    preflight = requests.options(idp.url + path, headers=asks, timeout=TIMEOUT)
    assert preflight.status_code == 405 and "Access-Control-Allow-Origin" not in preflight.headers
    answer = requests.get(idp.url + path, headers={"Origin": PAGE}, allow_redirects=False, timeout=TIMEOUT)
    assert "Access-Control-Allow-Origin" not in answer.headers


# --- introspection (RFC 7662) -------------------------------------------------------------------------------


def introspect(idp: ManagedProcess, auth: Any = CLIENT, **form: str) -> requests.Response:
    return requests.post(f"{oidc(idp)}/token/introspect", data=form, auth=auth, timeout=TIMEOUT)


def discovery(idp: ManagedProcess) -> dict[str, Any]:
    return requests.get(idp.url + DISCOVERY, timeout=TIMEOUT).json()


def test_discovery_lists_the_code_flow_and_introspection(idp: ManagedProcess) -> None:
    document = discovery(idp)
    assert document["authorization_endpoint"] == f"{oidc(idp)}/auth"
    assert document["introspection_endpoint"] == f"{oidc(idp)}/token/introspect"
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert "none" in document["token_endpoint_auth_methods_supported"]
    assert "dpop_signing_alg_values_supported" not in document  # only with --dpop-bind


def test_introspection_of_live_tokens(idp: ManagedProcess) -> None:
    body = login(idp, "bob")
    access = introspect(idp, token=body["access_token"])
    assert access.status_code == 200 and access.headers["Content-Type"] == "application/json"
    expected = {"active": True, "token_type": "Bearer", "client_id": "demo-client", "username": "bob"}
    assert access.json() == expected | claims(body["access_token"])
    by_post = {"client_id": CLIENT[0], "client_secret": CLIENT[1]}
    seen = introspect(idp, auth=None, token=body["refresh_token"], **by_post).json()
    expected = {"active": True, "client_id": "demo-client", "username": "bob"}
    assert seen == expected | claims(body["refresh_token"])


@pytest.mark.parametrize(
    "kind", ["revoked access", "revoked refresh", "expired", "used refresh", "garbage", "id_token"]
)
def test_introspection_of_dead_tokens(idp: ManagedProcess, kind: str) -> None:
    body = login(idp, scope="openid", access_ttl="0" if kind == "expired" else "300")
    presented = {
        "revoked refresh": body["refresh_token"],
        "used refresh": body["refresh_token"],
        "garbage": "not-a-token",
        "id_token": body["id_token"],
    }.get(kind, body["access_token"])
    if kind.startswith("revoked"):
        assert revoke(idp, token=presented).status_code == 200
    if kind == "used refresh":
        assert refresh(idp, presented).status_code == 200
    answer = introspect(idp, token=presented)
    assert answer.status_code == 200 and answer.json() == {"active": False}


def test_introspection_needs_a_confidential_client(idp: ManagedProcess) -> None:
    access_token = login(idp)["access_token"]
    before = stats(idp)["introspect"]
    refused = introspect(idp, auth=("demo-client", "wrong"), token=access_token)
    assert_oauth_error(refused, 401, "invalid_client")
    assert refused.headers["WWW-Authenticate"] == 'Basic realm="demo"'
    assert_oauth_error(introspect(idp, auth=None, client_id=SPA, token=access_token), 401, "invalid_client")
    assert_oauth_error(introspect(idp), 400, "invalid_request")
    assert stats(idp)["introspect"] == before + 3


# --- DPoP binding (--dpop-bind) -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dpop_idp() -> Iterator[ManagedProcess]:
    with start_idp("--dpop-bind") as proc:
        yield proc


@pytest.fixture(scope="module")
def dpop_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    return dict(ECAlgorithm.to_jwk(key.public_key(), as_dict=True))


def dpop_proof(
    key: Any, htu: str, header: dict[str, Any] | None = None, alg: str = "ES256", **changes: Any
) -> str:
    """A DPoP proof (RFC 9449 §4.2) as a client makes one; ``header`` and ``changes`` (to the claims) spoil
    it for the refusals, a None value dropping the member."""
    payload = {"jti": str(uuid.uuid4()), "htm": "POST", "htu": htu, "iat": int(time.time())} | changes
    headers = {"typ": "dpop+jwt", "jwk": public_jwk(key) if alg == "ES256" else None} | (header or {})
    return jwt.encode(
        {k: v for k, v in payload.items() if v is not None},
        key,
        algorithm=alg,
        headers={k: v for k, v in headers.items() if v is not None},
    )


def token_with_proof(idp: ManagedProcess, proof: str, **form: str) -> requests.Response:
    headers = {"DPoP": proof}
    return requests.post(f"{oidc(idp)}/token", data=form, auth=CLIENT, headers=headers, timeout=TIMEOUT)


def test_dpop_bound_access_token(dpop_idp: ManagedProcess, dpop_key: ec.EllipticCurvePrivateKey) -> None:
    proof = dpop_proof(dpop_key, f"{oidc(dpop_idp)}/token")
    answer = token_with_proof(dpop_idp, proof, grant_type="password", username="alice", password="alice-pw")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    jkt = idp_crypto.jwk_thumbprint(public_jwk(dpop_key))
    assert body["token_type"] == "DPoP" and claims(body["access_token"])["cnf"] == {"jkt": jkt}
    assert "cnf" not in claims(body["refresh_token"])  # a confidential client's refresh token is not bound
    seen = introspect(dpop_idp, token=body["access_token"]).json()
    assert seen["active"] is True and seen["token_type"] == "DPoP" and seen["cnf"] == {"jkt": jkt}
    assert token(dpop_idp, grant_type="client_credentials").json()["token_type"] == "Bearer"  # no proof
    algorithms = discovery(dpop_idp)["dpop_signing_alg_values_supported"]
    assert "ES256" in algorithms and "none" not in algorithms
    assert not any(alg.startswith("HS") for alg in algorithms)


def test_dpop_is_ignored_without_the_flag(idp: ManagedProcess, dpop_key: ec.EllipticCurvePrivateKey) -> None:
    for proof in (dpop_proof(dpop_key, f"{oidc(idp)}/token"), "not a proof"):
        answer = token_with_proof(idp, proof, grant_type="client_credentials")
        assert answer.status_code == 200 and answer.json()["token_type"] == "Bearer"
        assert "cnf" not in claims(answer.json()["access_token"])


def test_dpop_proof_that_does_not_verify_is_refused(dpop_idp: ManagedProcess, dpop_key: Any) -> None:
    answer = token_with_proof(
        dpop_idp, dpop_proof(dpop_key, f"{oidc(dpop_idp)}/token", htm="GET"), grant_type="client_credentials"
    )
    assert_oauth_error(answer, 400, "invalid_dpop_proof")
    assert answer.headers["Cache-Control"] == "no-store"


def test_dpop_public_client_refresh_needs_the_same_key(dpop_idp: ManagedProcess, dpop_key: Any) -> None:
    def proof(key: Any = dpop_key) -> str:
        return dpop_proof(key, f"{oidc(dpop_idp)}/token")

    body = spa_token(dpop_idp, code_exchange(code_of(dpop_idp)), proof()).json()
    jkt = idp_crypto.jwk_thumbprint(public_jwk(dpop_key))
    assert body["token_type"] == "DPoP" and claims(body["refresh_token"])["cnf"] == {"jkt": jkt}
    form = spa_refresh(body["refresh_token"])
    another_key = ec.generate_private_key(ec.SECP256R1())
    for refused in (spa_token(dpop_idp, form), spa_token(dpop_idp, form, proof(another_key))):
        assert_oauth_error(refused, 400, "invalid_dpop_proof")
    renewed = spa_token(dpop_idp, form, proof())
    assert renewed.status_code == 200, renewed.text  # the refusals did not use the refresh token up
    assert claims(renewed.json()["refresh_token"])["cnf"] == {"jkt": jkt}
    assert claims(renewed.json()["access_token"])["cnf"] == {"jkt": jkt}


# --- the core's pure parts ---------------------------------------------------------------------------------


def test_pkce_challenge_is_rfc_7636s() -> None:
    assert idp_crypto.pkce_challenge(VERIFIER) == CHALLENGE


def test_jwk_thumbprint_is_rfc_7638s() -> None:
    # RFC 7638 §3.1, with members a thumbprint ignores added.
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJE"
        "CPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY36"
        "8QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2"
        "NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert idp_crypto.jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    for broken in ({**jwk, "kty": "oct"}, {k: v for k, v in jwk.items() if k != "e"}, {**jwk, "n": 1}):
        with pytest.raises(KeyError):
            idp_crypto.jwk_thumbprint(broken)


HTU = "http://proxy.example:8080/realms/demo/protocol/openid-connect/token"


def check(*proofs: str) -> str:
    return idp_crypto.dpop_thumbprint(proofs, "POST", f"{OIDC}/token", time.time())


def test_dpop_proof_checks_pass_a_good_proof(dpop_key: ec.EllipticCurvePrivateKey) -> None:
    jkt = idp_crypto.jwk_thumbprint(public_jwk(dpop_key))
    assert check(dpop_proof(dpop_key, HTU)) == jkt
    # htu by its path: the host the client addressed is the proxy's, which the IdP cannot know.
    assert check(dpop_proof(dpop_key, f"https://other.example{OIDC}/token")) == jkt
    edwards = ed25519.Ed25519PrivateKey.generate()
    jwk = dict(OKPAlgorithm.to_jwk(edwards.public_key(), as_dict=True))
    assert check(dpop_proof(edwards, HTU, header={"jwk": jwk}, alg="EdDSA")) == idp_crypto.jwk_thumbprint(jwk)


def broken_proofs(key: ec.EllipticCurvePrivateKey) -> dict[str, tuple[str, ...]]:
    secret = b"0123456789abcdef0123456789abcdef"
    symmetric = {"kty": "oct", "k": idp_crypto.b64url(secret)}
    other = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    good = dpop_proof(key, HTU)
    return {
        "typ JWT": (dpop_proof(key, HTU, header={"typ": "JWT"}),),
        "HMAC": (dpop_proof(secret, HTU, header={"jwk": symmetric}, alg="HS256"),),
        "private jwk": (dpop_proof(key, HTU, header={"jwk": dict(ECAlgorithm.to_jwk(key, as_dict=True))}),),
        "no jwk": (dpop_proof(key, HTU, header={"jwk": None}),),
        "signed by another key": (dpop_proof(other, HTU, header={"jwk": public_jwk(key)}),),
        "htm": (dpop_proof(key, HTU, htm="GET"),),
        "htu": (dpop_proof(key, HTU.replace("/token", "/revoke")),),
        "iat long ago": (dpop_proof(key, HTU, iat=now - 600),),
        "iat ahead": (dpop_proof(key, HTU, iat=now + 600),),
        "no jti": (dpop_proof(key, HTU, jti=None),),
        "two proofs": (good, good),
        "garbage": ("not.a.proof",),
    }


# Each broken proof, and the check that must refuse it (not merely some check).
BROKEN = {
    "typ JWT": "typ must be dpop[+]jwt",
    "HMAC": "alg must be one of",
    "private jwk": "jwk must be a public key",
    "no jwk": "jwk must be a public key",
    "signed by another key": "Signature verification failed",
    "htm": "htm or htu",
    "htu": "htm or htu",
    "iat long ago": "iat is too far from now",
    "iat ahead": "not yet valid [(]iat[)]",
    "no jti": 'missing the "jti" claim',
    "two proofs": "exactly one DPoP header",
    "garbage": "does not verify",
}


@pytest.mark.parametrize(("kind", "reason"), BROKEN.items(), ids=BROKEN.keys())
def test_dpop_proof_checks_refuse(dpop_key: ec.EllipticCurvePrivateKey, kind: str, reason: str) -> None:
    with pytest.raises(idp_model.OAuthError, match=reason) as refused:
        check(*broken_proofs(dpop_key)[kind])
    assert (refused.value.status, refused.value.error) == (400, "invalid_dpop_proof")


@pytest.mark.parametrize(
    ("uri", "allowed"),
    [
        ("http://127.0.0.1:4200/cb", True),
        ("http://localhost/cb?x=1", True),
        ("http://[::1]:9/", True),
        ("http://127.0.0.2:4200/cb", False),
        ("http://127.0.0.1.evil.example/cb", False),
        ("https://localhost:4200/cb", False),
        ("http://localhost:4200/cb#f", False),
        ("http://localhost:99999/cb", False),
        ("javascript:alert(1)", False),
    ],
)
def test_spa_redirect_uris(uri: str, allowed: bool) -> None:
    assert idp_model.CLIENTS[SPA].allows_redirect(uri) is allowed
    assert idp_model.CLIENTS["demo-client"].allows_redirect(uri) is False
