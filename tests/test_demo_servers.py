"""Process handling of the demo servers, and the echo API run as a real process, driven over HTTP.

The demo identity provider's own behaviour is in test_demo_idp.py."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest
import requests

import demo_http
from procs import ManagedProcess, free_port, listening_on, start_process

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
TIMEOUT = 10


def start_script(name: str, *flags: str) -> ManagedProcess:
    ready = listening_on("demo-idp" if name == "demo_idp.py" else "echo-api")
    return start_process([sys.executable, str(SCRIPTS / name), "--port", "0", *flags], ready)


@pytest.fixture(scope="module")
def echo() -> Iterator[ManagedProcess]:
    with start_script("echo_api.py") as proc:
        yield proc


def stats(proc: ManagedProcess) -> dict[str, Any]:
    return requests.get(f"{proc.url}/_stats", timeout=TIMEOUT).json()


def reset(proc: ManagedProcess) -> None:
    requests.post(f"{proc.url}/_reset", timeout=TIMEOUT).raise_for_status()


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


@pytest.mark.parametrize("page", ["http://localhost:4200", "http://127.0.0.1:61234", "http://[::1]:8000"])
def test_echo_answers_cors_for_pages_on_loopback(echo: ManagedProcess, page: str) -> None:
    # A browser app calling the API with a handle sends a preflight first (Authorization is not "simple").
    asks = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}
    preflight = requests.options(f"{echo.url}/orders", headers={"Origin": page, **asks}, timeout=TIMEOUT)
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == page and preflight.headers["Vary"] == "Origin"
    assert "GET" in preflight.headers["Access-Control-Allow-Methods"].split(", ")
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"].split(", ")
    answer = requests.get(f"{echo.url}/orders", headers={"Origin": page, "Authorization": "Bearer h"},
                          timeout=TIMEOUT)  # fmt: skip
    assert answer.headers["Access-Control-Allow-Origin"] == page
    assert answer.headers["Access-Control-Expose-Headers"] == "WWW-Authenticate"
    assert "Access-Control-Allow-Methods" not in answer.headers


@pytest.mark.parametrize(
    "origin", ["", "http://evil.example", "https://localhost:4200", "http://localhost.evil.example", "null"]
)
def test_echo_answers_no_cors_elsewhere(echo: ManagedProcess, origin: str) -> None:
    headers = {"Origin": origin, "Access-Control-Request-Method": "GET"} if origin else {}
    for method in ("OPTIONS", "GET"):
        answer = requests.request(method, f"{echo.url}/orders", headers=headers, timeout=TIMEOUT)
        assert answer.status_code == 200
        assert not [name for name in answer.headers if name.lower().startswith("access-control-")]


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://127.0.0.1:4200/cb?x=1", "http://127.0.0.1:4200"),
        ("http://localhost", "http://localhost"),
        ("http://[::1]:9/", "http://[::1]:9"),
        ("http://127.0.0.1:0/", None),
        ("http://127.0.0.1:65536/", None),
        ("http://user@localhost:4200/", None),
        ("https://localhost:4200/", None),
        ("http://10.0.0.1:4200/", None),
        ("", None),
    ],
)
def test_loopback_origin(url: str, origin: str | None) -> None:
    assert demo_http.loopback_origin(url) == origin


def test_echo_bench_path_answers_the_same_small_body_whatever_it_is_sent(echo: ManagedProcess) -> None:
    reset(echo)
    jwt_like = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln"
    for authorization in (f"Bearer {jwt_like}", "Bearer xxxx", None):
        headers = {"Authorization": authorization} if authorization else {}
        answer = requests.get(f"{echo.url}/_bench", headers=headers, timeout=TIMEOUT)
        assert (answer.status_code, answer.json()) == (200, {"ok": True})
    assert stats(echo) == {"requests": 0, "authorizations": []}
