"""End to end (issue 15): a real mitmdump with splittoken_metrics and splittoken_audit_log on, before the demo
identity provider and the echo API, and introspection against the demo IdP and oidc-provider.

/metrics is read over HTTP as Prometheus scrapes it, deltas of a known number of events; the audit trail is
read from its file, rotated by rename as logrotate does; every secret the run issued is searched for in all
of them and in the introspection answers.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from oidc_provider import BASIC_CLIENT, INTROSPECTION_PATH, PROXY_OPTIONS, REVOCATION_PATH
from oidc_provider import TOKEN_PATH as OIDC_TOKEN_PATH
from procs import ManagedProcess, free_port
from splittoken.audit import handle_id
from stack import CLIENT, REVOKE_PATH, TOKEN_PATH, Proxy, start_proxy
from test_e2e import JWS_RE, forwarded_authorization

pytestmark = pytest.mark.e2e

INTROSPECT_PATH = TOKEN_PATH + "/introspect"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
# How long the audit writer may take to get lines to the file (it lingers 50 ms to batch them).
WRITE_WAIT_SECONDS = 15


@dataclass
class Observed:
    proxy: Proxy
    metrics_url: str
    audit: Path
    # Every secret the module's tests saw: tokens, handles, claim values other than sub.
    secrets: set[str] = field(default_factory=set)


@pytest.fixture(scope="module")
def observed(
    idp: ManagedProcess, api: ManagedProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Observed]:
    assert idp.url and api.url
    home = tmp_path_factory.mktemp("observability")
    port = free_port()
    options = {
        "splittoken_metrics": f"127.0.0.1:{port}",
        "splittoken_audit_log": str(home / "audit.log"),
        "splittoken_redact_api_responses": "false",  # the tests read the JWT the API got from its echo
    }
    proxy = start_proxy(idp.url, api.url, store=str(home / "store"), options=options)
    try:
        yield Observed(proxy, f"http://127.0.0.1:{port}/metrics", home / "audit.log")
    finally:
        proxy.stop()


def scrape(url: str) -> tuple[str, Samples]:
    response = requests.get(url, timeout=10)
    assert response.status_code == 200, response.text
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    return response.text, samples


def deltas(before: Samples, after: Samples) -> dict[str, float]:
    """The counters that moved, by name (and reason for refusals), histogram buckets left out."""
    moved = {}
    for key, value in after.items():
        name, labels = key
        if not name.endswith(("_total", "_count", "_sum")) or value == before.get(key, 0.0):
            continue
        label = dict(labels).get("reason")
        moved[f"{name}{{{label}}}" if label else name] = value - before.get(key, 0.0)
    return moved


def trail(audit: Path) -> list[dict[str, Any]]:
    """Every line of the audit trail, rotated files first."""
    lines = []
    for path in (audit.with_name(audit.name + ".1"), audit):
        if path.exists():
            lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


def lines_about(audit: Path, ids: set[str], count: int) -> list[dict[str, Any]]:
    """The lines naming any of ``ids``, once ``count`` of them are written."""
    deadline = time.monotonic() + WRITE_WAIT_SECONDS
    while True:
        found = [
            line for line in trail(audit) if ids & {v for k, v in line.items() if k.endswith("handle_id")}
        ]
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) == count, found
            return found
        time.sleep(0.05)


def login(observed: Observed) -> dict[str, str]:
    data = {"grant_type": "password", "username": "alice", "password": "alice-pw", **CLIENT}
    response = requests.post(observed.proxy.idp_url + TOKEN_PATH, data=data, timeout=10)
    assert response.status_code == 200, response.text
    return remember(observed, response.json())


def refresh(observed: Observed, refresh_handle: str) -> dict[str, str]:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_handle, **CLIENT}
    response = requests.post(observed.proxy.idp_url + TOKEN_PATH, data=data, timeout=10)
    assert response.status_code == 200, response.text
    return remember(observed, response.json())


def join(observed: Observed, handle: str) -> str:
    """An API call with ``handle``; returns the JWT the API received (a secret: remembered)."""
    response = requests.get(
        observed.proxy.api_url + "/anything", headers={"Authorization": f"Bearer {handle}"}, timeout=10
    )
    token = forwarded_authorization(response).removeprefix("Bearer ")
    observed.secrets |= {token, token.rpartition(".")[0]}
    claims = jwt.decode(token, options={"verify_signature": False})
    observed.secrets |= {
        value for name, value in claims.items() if name != "sub" and isinstance(value, str) and len(value) > 3
    } - {claims["sub"]}
    return token


def refused(observed: Observed, authorization: str, status: int) -> None:
    response = requests.get(
        observed.proxy.api_url + "/anything", headers={"Authorization": authorization}, timeout=10
    )
    assert response.status_code == status, response.text


def revoke(observed: Observed, handle: str) -> None:
    response = requests.post(
        observed.proxy.idp_url + REVOKE_PATH, data={"token": handle, **CLIENT}, timeout=10
    )
    assert response.status_code == 200, response.text


def introspect(observed: Observed, token: str) -> dict[str, Any]:
    # As an API outside the proxy does, through the proxy's listener for the identity provider.
    response = requests.post(
        observed.proxy.idp_url + INTROSPECT_PATH, data={"token": token, **CLIENT}, timeout=10
    )
    assert response.status_code == 200, response.text
    assert not JWS_RE.search(response.text), response.text
    return response.json()


def remember(observed: Observed, issued: dict[str, Any]) -> dict[str, Any]:
    observed.secrets |= {issued["access_token"], issued["refresh_token"]}
    if "id_token" in issued:  # the client's to read, but no business of metrics or the audit trail
        observed.secrets.add(issued["id_token"])
    return issued


# -----------------------------------------------------------------------------------------------------------


def test_counters_are_exact_as_a_scraper_reads_them(observed: Observed) -> None:
    _, before = scrape(observed.metrics_url)
    first, second = login(observed), login(observed)
    for _ in range(3):
        join(observed, first["access_token"])
    join(observed, second["access_token"])
    refused(observed, f"Bearer {first['access_token']}x", 401)  # unknown handle
    refused(observed, "Basic YWxpY2U6cHc=", 400)  # malformed
    requests.get(observed.proxy.api_url + "/anything", timeout=10)  # missing
    renewed = refresh(observed, second["refresh_token"])
    introspect(observed, renewed["access_token"])
    revoke(observed, first["access_token"])
    refused(observed, f"Bearer {first['access_token']}", 401)  # revoked: unknown handle
    text, after = scrape(observed.metrics_url)

    moved = deltas(before, after)
    assert 0 < moved.pop("splittoken_join_seconds_sum") < 4  # seconds, of four joins
    assert moved == {
        "splittoken_splits_total": 3,  # two logins, one refresh
        "splittoken_joins_total": 4,
        "splittoken_join_seconds_count": 4,
        "splittoken_refusals_total{unknown_handle}": 2,
        "splittoken_refusals_total{malformed}": 1,
        "splittoken_refusals_total{missing}": 1,
        "splittoken_refreshes_total": 1,
        "splittoken_introspections_total": 1,
        "splittoken_revocations_total": 1,
    }
    assert after[("splittoken_store_errors_total", frozenset())] == 0
    assert ("splittoken_cache_entries", frozenset()) in after
    assert after[("splittoken_audit_dropped_total", frozenset())] == 0
    assert_no_secret(observed, text)


def test_one_handles_life_in_the_audit_trail(observed: Observed) -> None:
    issued = login(observed)
    access, refresh_handle = issued["access_token"], issued["refresh_token"]
    join(observed, access)
    join(observed, access)
    stranger = base64.urlsafe_b64encode(b"n" * 32).decode().rstrip("=")
    refused(observed, f"Bearer {stranger}", 401)
    renewed = refresh(observed, refresh_handle)
    renewed_token = join(observed, renewed["access_token"])
    revoke(observed, renewed["refresh_token"])
    revoke(observed, access)
    refused(observed, f"Bearer {access}", 401)

    ids = {
        "access": handle_id(access), "refresh": handle_id(refresh_handle), "stranger": handle_id(stranger),
        "renewed": handle_id(renewed["access_token"]), "renewed_refresh": handle_id(renewed["refresh_token"]),
    }  # fmt: skip
    assert len(set(ids.values())) == len(ids)
    lines = lines_about(observed.audit, set(ids.values()), 10)
    names = {value: name for name, value in ids.items()}

    def told(line: dict[str, Any]) -> tuple[Any, ...]:
        named = {k: names[v] for k, v in line.items() if k.endswith("handle_id")}
        return (line["event"], line.get("reason"), named)

    assert [told(line) for line in lines] == [
        ("split", None, {"handle_id": "access", "refresh_handle_id": "refresh"}),
        ("join", None, {"handle_id": "access"}),
        ("join", None, {"handle_id": "access"}),
        ("refuse", "unknown_handle", {"handle_id": "stranger"}),
        ("split", None, {"handle_id": "renewed", "refresh_handle_id": "renewed_refresh"}),
        (
            "refresh",
            None,
            {"handle_id": "renewed", "old_handle_id": "refresh", "new_handle_id": "renewed_refresh"},
        ),
        ("join", None, {"handle_id": "renewed"}),
        ("revoke", None, {"handle_id": "renewed_refresh"}),
        ("revoke", None, {"handle_id": "access"}),
        ("refuse", "unknown_handle", {"handle_id": "access"}),
    ]
    assert [line["ts"] for line in lines] == sorted(line["ts"] for line in lines)
    sub = jwt.decode(renewed_token, options={"verify_signature": False})["sub"]
    assert {line.get("sub") for line in lines if line["event"] in ("split", "join", "refresh")} == {sub}
    assert all(line["client"].startswith("127.0.0.1:") for line in lines)
    assert_no_secret(observed, observed.audit.read_text())


def test_introspection_swaps_a_handle_and_answers_without_a_token(observed: Observed) -> None:
    issued = login(observed)
    access, refresh_handle = issued["access_token"], issued["refresh_token"]
    token = join(observed, access)
    claims = jwt.decode(token, options={"verify_signature": False})

    live = introspect(observed, access)
    assert live["active"] is True and live["sub"] == claims["sub"] and live["jti"] == claims["jti"]
    live_refresh = introspect(observed, refresh_handle)
    assert live_refresh["active"] is True and live_refresh["sub"] == claims["sub"]
    assert live_refresh["jti"] != claims["jti"]  # the refresh token's own claims: it was swapped in
    assert introspect(observed, "not-a-handle-of-the-proxy") == {"active": False}  # passed unchanged
    revoke(observed, access)
    assert introspect(observed, access) == {"active": False}
    revoke(observed, refresh_handle)
    assert introspect(observed, refresh_handle) == {"active": False}

    answers = json.dumps([live, live_refresh])
    for secret in (access, refresh_handle, token, token.rpartition(".")[0]):
        assert secret not in answers
    lines = lines_about(observed.audit, {handle_id(access), handle_id(refresh_handle)}, 6)
    assert [(line["event"], line["handle_id"]) for line in lines] == [
        ("split", handle_id(access)),
        ("join", handle_id(access)),
        ("introspect", handle_id(access)),
        ("introspect", handle_id(refresh_handle)),
        ("revoke", handle_id(access)),
        ("revoke", handle_id(refresh_handle)),
    ]


def test_the_trail_goes_on_in_a_new_file_after_logrotate_renames_it(observed: Observed) -> None:
    issued = login(observed)
    access = issued["access_token"]
    join(observed, access)
    lines_about(observed.audit, {handle_id(access)}, 2)
    rotated = observed.audit.with_name(observed.audit.name + ".1")
    assert not rotated.exists()
    observed.audit.rename(rotated)  # logrotate's default (create): rename, and nothing told to the proxy
    join(observed, access)
    join(observed, access)
    lines = lines_about(observed.audit, {handle_id(access)}, 4)
    assert [line["event"] for line in lines] == ["split", "join", "join", "join"]
    after = [json.loads(line) for line in observed.audit.read_text().splitlines()]
    assert [line["event"] for line in after] == ["join", "join"]
    assert oct(observed.audit.stat().st_mode & 0o777) == "0o600"
    _, samples = scrape(observed.metrics_url)
    assert samples[("splittoken_audit_dropped_total", frozenset())] == 0


def test_no_secret_of_the_run_in_metrics_or_the_audit_trail(observed: Observed) -> None:
    """Last in the module: every token, handle and claim value the tests above saw."""
    assert len(observed.secrets) > 20
    text, _ = scrape(observed.metrics_url)
    assert_no_secret(observed, text)
    assert_no_secret(observed, "\n".join(json.dumps(line) for line in trail(observed.audit)))


def assert_no_secret(observed: Observed, text: str) -> None:
    assert not JWS_RE.search(text)  # the demo IdP's refresh tokens are JWTs too: none of them either
    for secret in observed.secrets:
        assert secret not in text, f"{secret[:6]}… found"
        assert secret[:16] not in text or len(secret) < 16, f"a prefix of {secret[:6]}… found"


# -----------------------------------------------------------------------------------------------------------
# oidc-provider: /token/introspection


@pytest.fixture(scope="module")
def oidc_proxy(
    oidc_provider: ManagedProcess, api: ManagedProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Proxy, Path]]:
    assert oidc_provider.url and api.url
    home = tmp_path_factory.mktemp("oidc-observability")
    options = {**PROXY_OPTIONS, "splittoken_audit_log": str(home / "audit.log")}
    started = start_proxy(oidc_provider.url, api.url, store=str(home / "store"), options=options)
    yield started, home / "audit.log"
    started.stop()


def test_introspection_at_oidc_provider(
    oidc_provider: ManagedProcess, oidc_proxy: tuple[Proxy, Path]
) -> None:
    assert oidc_provider.url
    proxy, audit = oidc_proxy
    client = BASIC_CLIENT
    response = client.post(proxy.idp_url + OIDC_TOKEN_PATH, client.authorize(oidc_provider.url))
    assert response.status_code == 200, response.text
    issued = response.json()

    def introspect_there(token: str, status: int = 200) -> dict[str, Any]:
        answer = client.post(proxy.idp_url + INTROSPECTION_PATH, {"token": token})
        assert answer.status_code == status, answer.text
        assert not JWS_RE.search(answer.text), answer.text
        for secret in (issued["access_token"], issued["refresh_token"]):
            assert secret not in answer.text
        return answer.json()

    # oidc-provider introspects only the tokens it keeps, not its JWT access tokens: that it says so shows
    # the JWT reached it in place of the handle.
    structured = introspect_there(issued["access_token"], 400)
    assert structured["error"] == "unsupported_token_type" and "JWT" in structured["error_description"]
    live = introspect_there(issued["refresh_token"])
    assert live["active"] is True and live["sub"] == "alice" and live["client_id"] == client.client_id
    assert introspect_there("not-a-handle-of-the-proxy") == {"active": False}
    revoked = client.post(
        proxy.idp_url + REVOCATION_PATH,
        {"token": issued["refresh_token"], "token_type_hint": "refresh_token"},
    )
    assert revoked.status_code == 200, revoked.text
    assert introspect_there(issued["refresh_token"]) == {"active": False}
    ids = {handle_id(issued["access_token"]), handle_id(issued["refresh_token"])}
    lines = lines_about(audit, ids, 4)
    assert [line["event"] for line in lines] == ["split", "introspect", "introspect", "revoke"]
    assert lines[0]["sub"] == "alice"
    text = audit.read_text()
    assert not JWS_RE.search(text)
    assert issued["access_token"] not in text and issued["refresh_token"] not in text
