"""events.py: every event the routes tell, counted for splittoken.stats, on /metrics as a scraper reads it,
and in the audit trail, with handle ids and never a secret; the metrics listener and the trail follow the
options."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from mitmproxy import contentviews, exceptions, http
from mitmproxy.test import taddons, tflow
from prometheus_client.parser import text_string_to_metric_families

from hooks import HookDriver as Proxy
from oauth_flows import (
    IDP,
    api_flow,
    assert_refused,
    body_of,
    json_response,
    login,
    make_jwt,
    refresh_flow,
    revoke_flow,
    store_down,
    token_fields,
)
from splittoken.audit import Reason, handle_id
from splittoken.errors import OptionInvalid
from splittoken.events import COUNTS, Events
from splittoken.state import FlowState
from splittoken.view import SplitTokenView

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
# How long the audit writer may take to get a line to the file (it lingers 50 ms to batch).
WRITE_WAIT_SECONDS = 10


def scrape(address: tuple[str, int]) -> tuple[str, Samples]:
    response = requests.get(f"http://{address[0]}:{address[1]}/metrics", timeout=10)
    assert response.status_code == 200
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    return response.text, samples


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after[key] - before.get(key, 0.0)


def audit_lines(path: Path, count: int) -> list[dict[str, Any]]:
    """The first ``count`` lines of the audit trail, once the writer has written them."""
    deadline = time.monotonic() + WRITE_WAIT_SECONDS
    while True:
        text = path.read_text() if path.exists() else ""
        lines = [json.loads(line) for line in text.splitlines()]
        if len(lines) >= count or time.monotonic() > deadline:
            assert len(lines) == count, lines
            return lines
        time.sleep(0.02)


def refused(address: tuple[str, int]) -> bool:
    with socket.socket() as s:
        return s.connect_ex(address) != 0


def joined(handle: str, sub: str) -> FlowState:
    return FlowState("api", event="joined", handle_id=handle_id(handle), subject=sub)


def flow_at(peer: tuple[str, int]) -> http.HTTPFlow:
    flow = tflow.tflow()
    flow.client_conn.peername = peer
    return flow


# -----------------------------------------------------------------------------------------------------------
# Through the routes


async def test_a_handles_life_is_counted_scraped_and_audited(proxy: Proxy, tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    proxy.configure(splittoken_metrics="127.0.0.1:0", splittoken_audit_log=str(audit))
    events = proxy.addon.events
    assert events.metrics_address is not None
    _, before = scrape(events.metrics_address)

    fields, client = await login(proxy)  # split
    issued = body_of(client)
    handle, refresh_handle = issued["access_token"], issued["refresh_token"]
    for _ in range(3):  # joins
        assert await proxy.request(api_flow(f"Bearer {handle}"))
    await assert_refused(proxy, api_flow(f"Bearer {handle}x"), 401, "invalid_token")  # unknown handle
    trace = api_flow(f"Bearer {handle}")
    trace.request.method = "TRACE"
    await assert_refused(proxy, trace, 400, "invalid_request")
    renewed_fields = token_fields(refresh_token="opaque-refresh-" + "s" * 40)
    refresh = refresh_flow(refresh_handle)  # refresh (and a split)
    assert await proxy.request(refresh)
    renewed = body_of(await proxy.respond(refresh, json_response(renewed_fields)))
    introspection = revoke_flow(renewed["access_token"], url=f"{IDP}/token/introspect")
    assert await proxy.request(introspection)
    await proxy.respond(introspection, json_response({"active": True, "sub": "alice"}))
    revocation = revoke_flow(handle)
    assert await proxy.request(revocation)
    await proxy.respond(revocation, http.Response.make(200))
    await assert_refused(proxy, api_flow(f"Bearer {handle}"), 401, "invalid_token")  # revoked
    assert proxy.addon.vault
    proxy.addon.vault.store.get = store_down  # type: ignore[method-assign]
    await assert_refused(proxy, api_flow(f"Bearer {renewed['access_token']}"), 503, "temporarily_unavailable")

    text, after = scrape(events.metrics_address)
    expected = {
        "splittoken_splits_total": 2,
        "splittoken_joins_total": 3,
        "splittoken_refreshes_total": 1,
        "splittoken_revocations_total": 1,
        "splittoken_introspections_total": 1,
        "splittoken_store_errors_total": 1,
        "splittoken_join_seconds_count": 3,
    }
    assert {name: delta(before, after, name) for name in expected} == expected
    by_reason = {r: delta(before, after, "splittoken_refusals_total", reason=r) for r in Reason}
    assert {reason: n for reason, n in by_reason.items() if n} == {
        Reason.UNKNOWN_HANDLE: 2, Reason.METHOD: 1, Reason.STORE_UNAVAILABLE: 1,
    }  # fmt: skip
    assert dict(events.counts) == {
        "splits": 2, "bearer_splits": 2, "joins": 3, "refreshes": 1, "revocations": 1, "introspections": 1,
        "refusals": 4, "store_errors": 1,
    }  # fmt: skip

    lines = audit_lines(audit, 12)
    assert [(line["event"], line.get("reason")) for line in lines] == [
        ("split", None), ("join", None), ("join", None), ("join", None), ("refuse", "unknown_handle"),
        ("refuse", "method"), ("split", None), ("refresh", None), ("introspect", None), ("revoke", None),
        ("refuse", "unknown_handle"), ("refuse", "store_unavailable"),
    ]  # fmt: skip
    first, renewed_id = handle_id(handle), handle_id(renewed["access_token"])
    assert lines[0]["handle_id"] == first and lines[0]["refresh_handle_id"] == handle_id(refresh_handle)
    assert all(line["handle_id"] == first for line in lines[1:4])
    assert lines[4]["handle_id"] == handle_id(f"{handle}x")
    assert "handle_id" not in lines[5]  # refused before the credential was read
    assert lines[6]["handle_id"] == renewed_id
    assert lines[7] | {"ts": ""} == {
        "ts": "", "event": "refresh", "handle_id": renewed_id, "old_handle_id": handle_id(refresh_handle),
        "new_handle_id": handle_id(renewed["refresh_token"]), "sub": "alice", "client": "127.0.0.1:22",
    }  # fmt: skip
    assert lines[8]["handle_id"] == renewed_id and lines[9]["handle_id"] == first
    assert lines[10]["handle_id"] == first  # the revoked handle, presented again
    assert all(line["client"] == "127.0.0.1:22" for line in lines)
    assert [line.get("sub") for line in lines[:4]] == ["alice"] * 4
    assert all(line["ts"].endswith("Z") for line in lines)

    trail = audit.read_text()
    secrets = [handle, refresh_handle, renewed["access_token"], renewed["refresh_token"]]
    secrets += [fields["access_token"], fields["refresh_token"], fields["id_token"]]
    secrets += [renewed_fields["access_token"], renewed_fields["refresh_token"]]
    secrets += ["http://idp.example/realms/demo", "openid", "abc-123"]  # claims and fields other than sub
    for secret in secrets:
        assert secret not in trail and secret not in text
        assert secret[:12] not in trail and secret[:12] not in text


async def test_stats_prints_every_count(proxy: Proxy) -> None:
    _, client = await login(proxy)
    assert await proxy.request(api_flow(f"Bearer {body_of(client)['access_token']}"))
    await assert_refused(proxy, api_flow(), 401, None)
    stats = proxy.tctx.master.commands.call("splittoken.stats")
    assert stats.endswith(
        "splits=1 dpop_bound_splits=0 bearer_splits=1 joins=1 refreshes=0 revocations=0 introspections=0"
        " refusals=1 store_errors=0"
    ), stats
    assert proxy.addon.events.refusals == {Reason.MISSING: 1}


async def test_the_revoke_command_is_audited_without_a_client(proxy: Proxy, tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    proxy.configure(splittoken_audit_log=str(audit))
    _, client = await login(proxy)
    handle = body_of(client)["access_token"]
    assert proxy.tctx.master.commands.call("splittoken.revoke", handle).startswith("revoked")
    split, revoked = audit_lines(audit, 2)
    assert revoked == {"ts": revoked["ts"], "event": "revoke", "handle_id": handle_id(handle)}
    assert split["handle_id"] == handle_id(handle)


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [
        ("splittoken_metrics", "localhost", "expected host:port"),
        ("splittoken_metrics", "http://127.0.0.1:9100/metrics", "without a scheme"),
        ("splittoken_audit_log", "/", "cannot append to '/'"),
        ("splittoken_audit_log", "/nonexistent-directory/audit.log", "cannot append to"),
    ],
)
async def test_bad_values_are_refused_naming_the_option(
    proxy: Proxy, option: str, value: str, problem: str
) -> None:
    with pytest.raises(exceptions.OptionsError, match=f"^{option}: .*{problem}"):
        proxy.configure(**{option: value})
    assert proxy.addon.events.audit is None and proxy.addon.events.metrics is None


# -----------------------------------------------------------------------------------------------------------
# Events itself


def test_the_listener_moves_and_the_counts_go_on(tmp_path: Path) -> None:
    events = Events()
    try:
        events.configure(("127.0.0.1", 0), "")
        first = events.metrics_address
        assert first is not None
        flow = flow_at(("192.0.2.7", 50123))
        events.split(flow, "h" * 43, None, "alice")
        events.configure(("127.0.0.1", 0), "")  # unchanged as configured: the same listener
        assert events.metrics_address == first
        events.configure(("localhost", 0), "")
        second = events.metrics_address
        assert second is not None and second != first
        assert refused(first)
        events.split(flow, "h" * 43, None, "alice")
        _, samples = scrape(second)
        assert samples[("splittoken_splits_total", frozenset())] == 2
        events.configure(None, "")
        assert refused(second) and events.metrics is None
        events.split(flow, "h" * 43, None, "alice")  # off: counted here only
        assert events.counts["splits"] == 3
    finally:
        events.close()


def test_a_port_in_use_is_refused_naming_the_option() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        events = Events()
        with pytest.raises(OptionInvalid, match=r"^splittoken_metrics: cannot listen on 127\.0\.0\.1:"):
            events.configure(taken.getsockname(), "")
        assert events.metrics is None
        events.close()


def test_the_audit_trail_moves_and_close_writes_what_is_queued(tmp_path: Path) -> None:
    events = Events()
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    events.configure(None, str(first))
    flow = flow_at(("2001:db8::7", 443))
    events.join(flow, joined("a" * 43, "alice"), 0.00004)
    events.configure(None, str(second))  # the first trail is closed, its queue written
    assert [line["event"] for line in audit_lines(first, 1)] == ["join"]
    events.refuse(flow, FlowState("api", handle_id=handle_id("b" * 43)), Reason.DPOP)
    events.close()
    (line,) = audit_lines(second, 1)
    assert line == {
        "ts": line["ts"], "event": "refuse", "handle_id": handle_id("b" * 43), "reason": "dpop",
        "client": "[2001:db8::7]:443",
    }  # fmt: skip
    assert events.audit is None


def test_a_sub_or_client_the_trail_refuses_leaves_the_event_without_them(tmp_path: Path) -> None:
    events = Events()
    audit = tmp_path / "audit.log"
    events.configure(None, str(audit))
    jwt_sub = make_jwt()
    events.join(flow_at(("127.0.0.1", 1)), joined("a" * 43, jwt_sub), 0.0)  # a sub that looks like a token
    events.join(flow_at(("127.0.0.1", 1)), joined("a" * 43, "line\nbreak"), 0.0)
    events.introspect(flow_at(("not-an-ip", 1)), "a" * 43, "alice")
    events.close()
    lines = audit_lines(audit, 3)
    assert [set(line) for line in lines] == [{"ts", "event", "handle_id"}] * 3
    assert jwt_sub not in audit.read_text()


def test_off_means_counts_only(tmp_path: Path) -> None:
    events = Events()
    flow = flow_at(("127.0.0.1", 1))
    events.split(flow, "a" * 43, "r" * 43, "alice")
    events.split(flow, "b" * 43, "s" * 43, "alice", bound=True)
    events.join(flow, joined("a" * 43, "alice"), 0.0)
    events.refuse(flow, FlowState("api"), Reason.MALFORMED)
    events.refresh(flow, "r" * 43, "s" * 43, None, "")
    events.revoke(None, "a" * 43, "")
    events.introspect(flow, "a" * 43, "")
    events.store_error()
    assert dict(events.counts) == dict.fromkeys(COUNTS, 1) | {"splits": 2}
    assert events.metrics is None and events.audit is None
    events.close()


async def test_the_content_view_shows_the_handle_id_of_the_audit_trail(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = contentviews.ContentviewRegistry()
    for view in contentviews.registry.values():
        fresh.register(view)
    monkeypatch.setattr(contentviews, "registry", fresh)
    _, client = await login(proxy)
    handle = body_of(client)["access_token"]
    joined = api_flow(f"Bearer {handle}")
    assert await proxy.request(joined)
    unknown = api_flow(f"Bearer {handle}x")
    assert not await proxy.request(unknown)
    with taddons.context(SplitTokenView()):
        for flow, named in ((joined, handle), (unknown, f"{handle}x")):
            result = contentviews.prettify_message(flow.request, flow, "Split Token", registry=fresh)
            assert f"handle_id: {handle_id(named)}" in result.text
            assert handle not in result.text


async def test_a_refused_api_answer_names_the_handle_it_joined(proxy: Proxy, tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    proxy.configure(splittoken_audit_log=str(audit))
    fields, client = await login(proxy)
    handle = body_of(client)["access_token"]
    flow = api_flow(f"Bearer {handle}")
    assert await proxy.request(flow)
    echoed = json.dumps({"seen": fields["access_token"]}).encode("utf-16")  # no rewriting it
    answer = await proxy.respond(flow, http.Response.make(200, echoed))
    assert answer.status_code == 502
    refused = audit_lines(audit, 3)[2]
    assert refused | {"ts": ""} == {
        "ts": "", "event": "refuse", "handle_id": handle_id(handle), "reason": "api_response", "sub": "alice",
        "client": "127.0.0.1:22",
    }  # fmt: skip
