"""The demo identity provider and the echo API, each run as a real process, driven over HTTP."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests

from procs import ManagedProcess, free_port, listening_on, start_process

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
CLIENT = ("demo-client", "demo-secret")
TIMEOUT = 10


def start_script(name: str, *flags: str) -> ManagedProcess:
    ready = listening_on("demo-idp" if name == "demo_idp.py" else "echo-api")
    return start_process([sys.executable, str(SCRIPTS / name), "--port", "0", *flags], ready)


@pytest.fixture(scope="module")
def idp() -> Iterator[ManagedProcess]:
    with start_script("demo_idp.py") as proc:
        yield proc


@pytest.fixture(scope="module")
def variant() -> Iterator[ManagedProcess]:
    flags = ["--realm", "other", "--access-ttl", "60", "--refresh-ttl", "120", "--no-rotate"]
    with start_script("demo_idp.py", *flags, "--refuse-access-revoke", "--verbose") as proc:
        yield proc


@pytest.fixture(scope="module")
def echo() -> Iterator[ManagedProcess]:
    with start_script("echo_api.py") as proc:
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


# --- process handling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["demo_idp.py", "echo_api.py"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ready_line_and_clean_exit(name: str, sig: signal.Signals) -> None:
    with start_script(name) as proc:
        prefix = "demo-idp" if name == "demo_idp.py" else "echo-api"
        assert proc.output() == f"{prefix} listening on http://127.0.0.1:{proc.port}\n"
        assert proc.url == f"http://127.0.0.1:{proc.port}"
        os.kill(proc.pid, sig)
        assert proc.proc.wait(TIMEOUT) == 0
        assert proc.stop() == 0
        assert "Traceback" not in proc.output()


def test_start_process_reports_early_exit() -> None:
    code = "import sys; print('boom', file=sys.stderr); sys.exit(3)"
    with pytest.raises(RuntimeError, match=r"(?s)exit code 3.*boom"):
        start_process([sys.executable, "-c", code], "never printed")


def test_start_process_times_out() -> None:
    code = "import time; print('hello'); time.sleep(60)"
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"(?s)not ready after 0.5s.*hello"):
        start_process([sys.executable, "-c", code], "never printed", timeout=0.5)
    assert time.monotonic() - started < 5


def test_start_process_url_from_pattern_groups() -> None:
    # mitmdump's style: a wildcard host, a trailing dot.
    code = "import time; print('proxy listening at *:4242.'); time.sleep(60)"
    args = [sys.executable, "-c", code]
    with start_process(args, r"listening at") as proc:  # a plain substring: no URL
        assert (proc.url, proc.port) == (None, None)
    with start_process(args, re.compile(r"listening at (?P<host>\S+):(?P<port>\d+)")) as proc:
        assert (proc.url, proc.port) == ("http://127.0.0.1:4242", 4242)
    with start_process(args, "listening at", url="http://localhost:4343") as proc:
        assert (proc.url, proc.port) == ("http://localhost:4343", 4343)


def test_stop_kills_a_process_that_ignores_sigterm() -> None:
    code = (
        "import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready');"
        "print('on stderr', os.environ['EXTRA'], 'PATH' in os.environ, file=sys.stderr); time.sleep(60)"
    )
    proc = start_process([sys.executable, "-c", code], "ready", env={"EXTRA": "1"})
    proc.wait_for("on stderr 1 True", timeout=5)  # env adds to the inherited environment
    assert proc.stop(timeout=0.5) == -signal.SIGKILL
    assert proc.stop() == -signal.SIGKILL  # idempotent
    assert "on stderr" in proc.output()


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        pass


# --- identity provider: discovery and keys -------------------------------------------------------------


def test_discovery_uses_the_host_header(idp: ManagedProcess) -> None:
    url = f"{idp.url}/realms/demo/.well-known/openid-configuration"
    direct = requests.get(url, timeout=TIMEOUT).json()
    assert direct["issuer"] == f"{idp.url}/realms/demo"
    assert direct["token_endpoint"] == f"{oidc(idp)}/token"
    assert direct["revocation_endpoint"] == f"{oidc(idp)}/revoke"
    assert direct["jwks_uri"] == f"{oidc(idp)}/certs"
    assert direct["userinfo_endpoint"] == f"{oidc(idp)}/userinfo"
    assert set(direct["grant_types_supported"]) == {"client_credentials", "password", "refresh_token"}
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
    with start_script("demo_idp.py", "--refresh-delay", str(delay)) as slow:
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
        "token": {"client_credentials": 0, "password": 0, "refresh_token": 0, "errors": 0},
        "revoke": 0,
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
        "token": {"client_credentials": 2, "password": 1, "refresh_token": 2, "errors": 3},
        "revoke": 1,
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


# --- echo API ------------------------------------------------------------------------------------------


def echo_raw(echo: ManagedProcess, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[http.client.HTTPResponse, bytes]:  # fmt: skip
    conn = http.client.HTTPConnection(urlsplit(echo.url).netloc, timeout=TIMEOUT)
    conn.request(method, path, body=body, headers=headers or {})
    answer = conn.getresponse()
    data = answer.read()
    conn.close()
    return answer, data


def test_echo_reports_the_request(echo: ManagedProcess) -> None:
    headers = {"X-First": "1", "x-second": "two", "X-Third": "3"}
    answer, data = echo_raw(echo, "POST", "/a/b%20c?x=1&y=%2F", b"caf\xc3\xa9 \xff", headers)
    assert answer.status == 200 and answer.getheader("Content-Type") == "application/json"
    seen = json.loads(data)
    assert (seen["method"], seen["path"], seen["query"]) == ("POST", "/a/b%20c", "x=1&y=%2F")
    assert seen["body"] == "café \ufffd"
    names = [name for name, _ in seen["headers"]]
    assert names.index("X-First") < names.index("x-second") < names.index("X-Third")
    assert ["x-second", "two"] in seen["headers"]
    assert "jwt_claims" not in seen


def test_echo_chunked_body(echo: ManagedProcess) -> None:
    answer = requests.put(
        f"{echo.url}/upload", data=iter([b"hello ", b"chunked ", b"world"]), timeout=TIMEOUT
    )
    seen = answer.json()
    assert ["Transfer-Encoding", "chunked"] in seen["headers"]
    assert (seen["method"], seen["body"]) == ("PUT", "hello chunked world")


def test_echo_head_and_keep_alive(echo: ManagedProcess) -> None:
    conn = http.client.HTTPConnection(urlsplit(echo.url).netloc, timeout=TIMEOUT)
    conn.request("HEAD", "/x")
    head = conn.getresponse()
    assert head.status == 200 and int(head.getheader("Content-Length")) > 0 and head.read() == b""
    sock = conn.sock
    for method in ["PATCH", "DELETE", "OPTIONS", "PURGE"]:
        conn.request(method, "/x", body=b"{}")
        assert json.loads(conn.getresponse().read())["method"] == method
    assert conn.sock is sock
    conn.close()


def test_echo_decodes_bearer_jwt_without_verifying(echo: ManagedProcess) -> None:
    forged = jwt.encode(
        {"sub": "alice", "tenant": "acme"}, "not-the-real-key-but-32-bytes-long", algorithm="HS256"
    )
    seen = requests.get(
        f"{echo.url}/api", headers={"Authorization": f"Bearer {forged}"}, timeout=TIMEOUT
    ).json()
    assert seen["jwt_claims"] == {"sub": "alice", "tenant": "acme"}
    for authorization in ["Bearer opaque-handle", "Basic YTpi"]:
        seen = requests.get(
            f"{echo.url}/api", headers={"Authorization": authorization}, timeout=TIMEOUT
        ).json()
        assert "jwt_claims" not in seen


def test_echo_stats(echo: ManagedProcess) -> None:
    reset(echo)
    assert stats(echo) == {"requests": 0, "authorizations": []}
    requests.get(f"{echo.url}/one", headers={"Authorization": "Bearer aaa"}, timeout=TIMEOUT)
    requests.post(f"{echo.url}/two", timeout=TIMEOUT)
    requests.get(f"{echo.url}/three", headers={"Authorization": "Bearer bbb"}, timeout=TIMEOUT)
    assert stats(echo) == {"requests": 3, "authorizations": ["Bearer aaa", "Bearer bbb"]}
    reset(echo)
    assert stats(echo) == {"requests": 0, "authorizations": []}


def test_echo_rejects_malformed_chunks(echo: ManagedProcess) -> None:
    with socket.create_connection((urlsplit(echo.url).hostname, echo.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        reply = sock.makefile("rb").read()  # the server closes: the stream is out of sync
    assert reply.startswith(b"HTTP/1.1 400 ")
