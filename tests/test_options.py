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
    assert options.unanchored_domain("~d api.example.com")
    assert options.unanchored_domain("~m GET & (~d api.example.com)")
    assert options.unanchored_domain('~d "^api.example.com"')
    assert not options.unanchored_domain(r"~d ^api\.example\.com$")
    assert not options.unanchored_domain(r'~d "^api\.example\.com$" & ~m GET')
    assert not options.unanchored_domain("~u /api")


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
