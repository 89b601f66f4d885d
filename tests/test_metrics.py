"""metrics.py: exact counts read from the real HTTP endpoint, as a scraper reads them; the listener's life."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import prometheus_client
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from splittoken.audit import Event, Reason
from splittoken.audit_trail import AuditTrail
from splittoken.metrics import Metrics, parse_listen_address

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

JWS = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLW9mLXRoZS10b2tlbi1hYmNkZWZnaGlqa2xtbm9w"


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Metrics, str]]:
    """One served Metrics for the module: each test reads deltas, as a scraper would."""
    metrics = Metrics()
    host, port = metrics.serve("127.0.0.1", 0)
    yield metrics, f"http://{host}:{port}/metrics"
    metrics.close()


def scrape(url: str) -> tuple[str, Samples]:
    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    return response.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_counts_are_exact_deltas(served: tuple[Metrics, str]) -> None:
    metrics, url = served
    _, before = scrape(url)
    for _ in range(3):
        metrics.split()
    for seconds in (0.00002, 0.00004, 0.00004, 0.0002, 0.003):
        metrics.join(seconds)
    for reason in (Reason.UNKNOWN_HANDLE, Reason.UNKNOWN_HANDLE, "dpop", Reason.STORE_UNAVAILABLE):
        metrics.refuse(reason)
    metrics.refresh()
    metrics.revoke()
    metrics.revoke()
    metrics.introspect()
    for _ in range(4):
        metrics.store_error()
    _, after = scrape(url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("splittoken_splits_total") == 3
    assert delta("splittoken_joins_total") == 5
    assert delta("splittoken_refreshes_total") == 1
    assert delta("splittoken_revocations_total") == 2
    assert delta("splittoken_introspections_total") == 1
    assert delta("splittoken_store_errors_total") == 4
    assert delta("splittoken_refusals_total", reason="unknown_handle") == 2
    assert delta("splittoken_refusals_total", reason="dpop") == 1
    assert delta("splittoken_refusals_total", reason="store_unavailable") == 1
    assert delta("splittoken_refusals_total", reason="other") == 0
    assert delta("splittoken_join_seconds_count") == 5
    assert delta("splittoken_join_seconds_sum") == pytest.approx(0.0033)
    assert delta("splittoken_join_seconds_bucket", le="2.5e-05") == 1
    assert delta("splittoken_join_seconds_bucket", le="5e-05") == 3
    assert delta("splittoken_join_seconds_bucket", le="0.00015") == 3
    assert delta("splittoken_join_seconds_bucket", le="0.00025") == 4
    assert delta("splittoken_join_seconds_bucket", le="0.0025") == 4
    assert delta("splittoken_join_seconds_bucket", le="0.005") == 5
    assert delta("splittoken_join_seconds_bucket", le="+Inf") == 5


def test_every_reason_is_exported_and_no_other_label_value_ever(served: tuple[Metrics, str]) -> None:
    metrics, url = served
    _, before = scrape(url)
    for reason in (JWS, JWS.rsplit(".", 1)[1], "Bearer x", "", "UNKNOWN_HANDLE"):
        metrics.refuse(reason)
    text, after = scrape(url)
    reasons = {dict(labels)["reason"] for name, labels in after if name == "splittoken_refusals_total"}
    assert reasons == {reason.value for reason in Reason}
    assert (
        value(after, "splittoken_refusals_total", reason="other")
        - value(before, "splittoken_refusals_total", reason="other")
        == 5
    )
    for secret in (JWS, *JWS.split("."), "Bearer", "UNKNOWN_HANDLE"):
        assert secret not in text


def test_gauges_are_read_at_scrape_time_and_a_failing_source_is_left_out(served: tuple[Metrics, str]) -> None:
    metrics, url = served
    entries = [41]
    metrics.cache_entries = lambda: entries[0]
    try:
        _, first = scrape(url)
        entries[0] = 42
        _, second = scrape(url)
        metrics.cache_entries = lambda: 1 / 0
        _, failing = scrape(url)
    finally:
        metrics.cache_entries = None
    assert value(first, "splittoken_cache_entries") == 41
    assert value(second, "splittoken_cache_entries") == 42
    assert not any(name == "splittoken_cache_entries" for name, _ in failing)
    assert value(failing, "splittoken_joins_total") >= 0  # the rest of the scrape is there
    _, unset = scrape(url)
    assert not any(name == "splittoken_cache_entries" for name, _ in unset)


def test_audit_drops_are_a_counter(served: tuple[Metrics, str], tmp_path: Path) -> None:
    metrics, url = served
    trail = AuditTrail(tmp_path / "audit.log")
    assert trail.close()
    for _ in range(3):
        assert not trail.record(Event.SPLIT)
    metrics.audit_dropped = lambda: trail.dropped
    try:
        text, samples = scrape(url)
    finally:
        metrics.audit_dropped = None
    assert value(samples, "splittoken_audit_dropped_total") == 3
    assert "# TYPE splittoken_audit_dropped_total counter" in text


def test_instances_have_their_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.split()
    first.split()
    second.split()
    assert first.registry.get_sample_value("splittoken_splits_total") == 2
    assert second.registry.get_sample_value("splittoken_splits_total") == 1
    assert prometheus_client.REGISTRY.get_sample_value("splittoken_splits_total") is None


def refused(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((host, port)) != 0


def test_close_frees_the_port_for_the_next_listener() -> None:
    metrics = Metrics()
    host, port = metrics.serve("127.0.0.1", 0)
    for round_ in range(3):
        metrics.split()
        _, samples = scrape(f"http://{host}:{port}/metrics")
        assert value(samples, "splittoken_splits_total") == round_ + 1
        metrics.close()
        assert refused(host, port)
        assert metrics.serve(host, port) == (host, port)  # the same port, bound again at once
    metrics.close()
    metrics.close()  # closing twice is harmless
    assert refused(host, port)


def test_serves_on_ipv6_loopback() -> None:
    metrics = Metrics()
    host, port = metrics.serve(*parse_listen_address("[::1]:0"))
    try:
        assert host == "::1"
        metrics.revoke()
        _, samples = scrape(f"http://[::1]:{port}/metrics")
        assert value(samples, "splittoken_revocations_total") == 1
    finally:
        metrics.close()
    assert refused("::1", port)


def test_serve_refuses_a_port_in_use_and_a_second_serve() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            Metrics().serve("127.0.0.1", taken.getsockname()[1])
    metrics = Metrics()
    metrics.serve("127.0.0.1", 0)
    try:
        with pytest.raises(RuntimeError, match="already served"):
            metrics.serve("127.0.0.1", 0)
    finally:
        metrics.close()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9100", ("127.0.0.1", 9100)),
        ("0.0.0.0:9100", ("0.0.0.0", 9100)),
        ("[::1]:9100", ("::1", 9100)),
        ("[::]:0", ("::", 0)),
        ("[fe80::1%eth0]:9100", ("fe80::1%eth0", 9100)),
        ("localhost:65535", ("localhost", 65535)),
        ("metrics.internal.example:9100", ("metrics.internal.example", 9100)),
    ],
)
def test_parse_listen_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "expected host:port"),
        ("9100", "expected host:port"),
        (":9100", "every interface"),
        ("127.0.0.1", "expected host:port"),
        ("127.0.0.1:", "port must be a number"),
        ("127.0.0.1:65536", "port must be a number"),
        ("127.0.0.1:-1", "port must be a number"),
        ("127.0.0.1:http", "port must be a number"),
        ("127.0.0.1: 9100", "port must be a number"),
        ("127.0.0.1:\u0669\u0661\u0660\u0660", "port must be a number"),  # Arabic-Indic digits
        ("127.0.0.1:9100/metrics", "port must be a number"),
        ("::1:9100", "in brackets"),
        ("[::1]", "port must be a number"),
        ("[127.0.0.1]:9100", "not an IPv6 address"),
        ("[zz]:9100", "not an IPv6 address"),
        ("http://127.0.0.1:9100", "without a scheme"),
        ("http://127.0.0.1", "without a scheme"),
        ("host name:9100", "neither an IP address nor a host name"),
        ("a..b:9100", "neither an IP address nor a host name"),
        ("-a:9100", "neither an IP address nor a host name"),
        ("user@host:9100", "neither an IP address nor a host name"),
    ],
)
def test_parse_listen_address_refuses(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_listen_address(text)
