"""options.py: declaring and parsing the splittoken_* options; bad values are refused."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from hooks import HookDriver as Proxy
from oauth_flows import (
    IDP,
    token_flow,
)
from splittoken import options, routing
from splittoken.addon import SplitToken
from splittoken.settings import parse_settings, unanchored_domain


def test_unanchored_domain_warning_is_logged(caplog: pytest.LogCaptureFixture, tmp_path: Any) -> None:
    addon = SplitToken()
    with taddons.context(addon) as tctx:
        tctx.options.update(confdir=str(tmp_path))
        with caplog.at_level(logging.WARNING, logger="splittoken"):
            tctx.configure(addon, splittoken_api_filter="~d api.example.com")
        assert any("unanchored" in r.getMessage() for r in caplog.records)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="splittoken"):
            tctx.configure(addon, splittoken_api_filter=r"~d ^api\.example\.com$")
        assert not any("unanchored" in r.getMessage() for r in caplog.records)
        addon.done()


def test_unanchored_domain() -> None:
    assert unanchored_domain("~d api.example.com")
    assert unanchored_domain("~m GET & (~d api.example.com)")
    assert unanchored_domain('~d "^api.example.com"')
    assert not unanchored_domain(r"~d ^api\.example\.com$")
    assert not unanchored_domain(r'~d "^api\.example\.com$" & ~m GET')
    assert not unanchored_domain("~u /api")


@pytest.mark.parametrize(
    "options",
    [
        {"splittoken_api_filter": "~d ("},
        {"splittoken_token_filter": "~u ("},
        {"splittoken_revoke_filter": "~nonsense"},
        {"splittoken_algorithms": ["none"]},
        {"splittoken_algorithms": ["RS256", "XX999"]},
        {"splittoken_algorithms": []},
        {"splittoken_max_ttl": -1},
        {"splittoken_max_ttl": 0},
        {"splittoken_refresh_max_ttl": -5},
        {"splittoken_refresh_grace": -1},
        {"splittoken_leeway": -1},
        {"splittoken_max_body": 0},
        {"splittoken_store_timeout_ms": 0},
        {"splittoken_jwks_url": "file:///etc/passwd"},
        {"splittoken_store": "redis://"},
    ],
)
async def test_bad_options_raise(proxy: Proxy, options: dict[str, Any]) -> None:
    with pytest.raises(exceptions.OptionsError):
        proxy.configure(**options)


async def test_a_bad_option_at_start_up_exits_once_running(tmp_path: Any) -> None:
    """Issue 10, property 7: a bad value at start-up is logged (no OptionsError: mitmproxy would print a
    traceback), and the proxy exits with 1 once it runs, even when mitmproxy loaded the script too late to
    exit for the logged error itself."""
    addon = SplitToken()
    with taddons.context(addon) as tctx:
        # One update, the first the addon sees: as mitmdump's command line sets its options.
        tctx.options.update(
            confdir=str(tmp_path), splittoken_store=str(tmp_path / "store"), splittoken_max_ttl=-1
        )
        assert addon.misconfigured and "splittoken_max_ttl" in addon.misconfigured
        with pytest.raises(SystemExit) as exited:
            addon.running()
        assert exited.value.code == 1
        addon.done()


def test_token_filter_ignores_token_in_the_query(proxy: Proxy) -> None:
    settings = proxy.addon.settings
    assert settings
    assert routing.classify(token_flow(url=f"{IDP}/login?next=/token"), settings).route is None
    assert routing.classify(token_flow(url=f"{IDP}/token?x=1"), settings).route == "token"


def test_changing_the_leeway_keeps_the_open_store(proxy: Proxy) -> None:
    assert proxy.addon.vault
    store = proxy.addon.vault.store
    proxy.configure(splittoken_leeway=30)
    assert proxy.addon.vault.store is store and proxy.addon.vault.leeway == 30


def test_defaults_are_safe() -> None:
    """Issue 10, property 8: echoes of the JWT are redacted unless asked otherwise; no origin is named."""
    values = {option.name: option.default for option in options.OPTIONS} | {"confdir": "/nonexistent"}
    settings = parse_settings(values)
    assert settings.redact_api_responses is True
    assert settings.cors_origins == frozenset()
    assert settings.stream_large_bodies is None


@pytest.mark.parametrize(
    "origins",
    [
        ["https://app.example/"],
        ["https://app.example/callback"],
        ["https://app.example?x=1"],
        ["https://user@app.example"],
        ["app.example"],
        ["null"],  # what sandboxed pages and file: URLs send: no origin to trust
        [""],
        ["https://app.example", "*.example"],
    ],
)
async def test_bad_cors_origins_are_refused(proxy: Proxy, origins: list[str]) -> None:
    with pytest.raises(exceptions.OptionsError, match="splittoken_cors_origins"):
        proxy.configure(splittoken_cors_origins=origins)
    assert proxy.addon.settings and proxy.addon.settings.cors_origins == frozenset()  # the old value kept


def test_cors_origins_are_compared_as_browsers_send_them(proxy: Proxy) -> None:
    proxy.configure(splittoken_cors_origins=["https://App.Example:8443", "http://[::1]:3000", "*"])
    expected = frozenset({"https://app.example:8443", "http://[::1]:3000", "*"})
    assert proxy.addon.settings and proxy.addon.settings.cors_origins == expected
    assert proxy.addon.answers.cors.origins == expected


def test_the_stream_threshold_reaches_the_settings(proxy: Proxy) -> None:
    """The API route scans answers of unknown length as streams when mitmproxy may stream them."""
    proxy.tctx.options.add_option("stream_large_bodies", str | None, None, "proxyserver's option")
    proxy.configure(stream_large_bodies="2m")
    assert proxy.addon.settings and proxy.addon.settings.stream_large_bodies == 2 * 1024 * 1024
    with pytest.raises(exceptions.OptionsError, match="stream_large_bodies"):
        proxy.configure(stream_large_bodies="1k")  # below splittoken_max_body: token answers would stream
