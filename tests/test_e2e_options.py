"""A typo never runs a proxy that passes tokens (issue 10, property 7): every splittoken_* option with bad
values, at start-up of real mitmdump and mitmweb processes, and edited through mitmweb's HTTP API.

mitmproxy sets a script's options only once the script has loaded them; a value it cannot parse then makes
the script silently not load, and the proxy runs without the addon. Each bad value here must instead stop
the process with one line naming the option, and no traceback.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from procs import ManagedProcess, free_port
from stack import ADDON, CLIENT, TOKEN_PATH, Proxy, start_proxy, tool_path

pytestmark = pytest.mark.e2e

INT_VALUES = ["abc", "1.5", "-1"]
# A proxy refusing its options exits milliseconds after listening; one still up after this runs as a proxy.
EXIT_GRACE_SECONDS = 10
# Every option the addon has, with values it must refuse. The first is the one tried in mitmweb too.
BAD_VALUES: dict[str, list[str]] = {
    "splittoken_token_filter": ["~m POST & (", "~bogus"],
    "splittoken_api_filter": ["~d (("],
    "splittoken_revoke_filter": ['~u "("'],
    "splittoken_introspect_filter": ["~q ("],
    "splittoken_public_filter": ["!"],
    "splittoken_store": ["mongodb://x", "redis://127.0.0.1:notaport/0", "redis://127.0.0.1:6379/notadb"],
    "splittoken_store_timeout_ms": INT_VALUES,
    "splittoken_max_ttl": INT_VALUES,
    "splittoken_refresh_max_ttl": INT_VALUES,
    "splittoken_refresh_grace": INT_VALUES,
    "splittoken_refresh_lease": [*INT_VALUES, "0"],
    # "1" on the directory store these start-ups use: replicas are Redis's.
    "splittoken_min_replicas": ["many", "-1", "1"],
    "splittoken_leeway": INT_VALUES,
    "splittoken_max_body": INT_VALUES,
    "splittoken_algorithms": ["none", "RS1"],
    "splittoken_jwks_url": ["ftp://example.com/jwks", "certs.json"],
    "splittoken_redact_api_responses": ["maybe"],
    "splittoken_allow_client_jwt": ["maybe"],
    "splittoken_log_joins": ["maybe"],
    "splittoken_cors_origins": ["null", "https://app.example/callback"],
    "splittoken_cache_size": ["abc", "-1"],
    "splittoken_dpop": ["on", "Required"],
    "splittoken_dpop_window": [*INT_VALUES, "0"],
    "splittoken_dpop_nonce": ["maybe"],
    "splittoken_public_urls": [
        "api.example.com@8443",
        "https://api.example.com/v1@8443",
        "https://a.example@0",
    ],
    "splittoken_metrics": ["localhost", "127.0.0.1:99999", "http://127.0.0.1:9100/metrics"],
    "splittoken_audit_log": ["/nonexistent-directory/audit.log", "/"],
}
START_UPS = [
    (tool, option, value)
    for tool in ("mitmdump", "mitmweb")
    for option, values in BAD_VALUES.items()
    for value in (values if tool == "mitmdump" else values[:1])
]


def test_every_option_has_bad_values_here(tmp_path: Path) -> None:
    """Property 7: the table above covers every splittoken_* option that `mitmdump --options` lists, so a
    new option is tested with bad values too."""
    store = f"splittoken_store={tmp_path / 'store'}"
    listed = subprocess.run(
        [tool_path("mitmdump"), "-s", str(ADDON), "--set", store, "--options"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=True,
    ).stdout  # fmt: skip
    options = set(re.findall(r"^(splittoken_\w+):", listed, re.MULTILINE))
    assert options, listed
    assert options == set(BAD_VALUES), f"options without bad values here: {sorted(options - set(BAD_VALUES))}"


@dataclass(frozen=True)
class StartUp:
    code: int | None  # None: it kept running as a proxy
    output: str
    left_behind: list[str]  # what it created in its working directory


def start_up(tool: str, option: str, value: str, cwd: Path) -> StartUp:
    """Start ``tool`` with the addon and one bad value; see whether it exits, and what it says."""
    port = free_port()
    args = ["env", "-C", str(cwd), tool_path(tool), "--set", "listen_host=127.0.0.1", "-p", str(port)]
    args += ["-s", str(ADDON), "--set", f"{option}={value}"]
    if option != "splittoken_store":
        args += ["--set", f"splittoken_store={cwd / 'store'}"]
    if tool == "mitmweb":
        for setting in ("web_open_browser=false", "web_host=127.0.0.1", f"web_port={free_port()}"):
            args += ["--set", setting]
    process = ManagedProcess(args, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    try:
        process.wait_for(re.compile(rf"listening at .*:{port}\b"), timeout=60)
    except RuntimeError:  # it ended before listening
        return StartUp(process.stop(), process.output(), sorted(p.name for p in cwd.iterdir()))
    # Listening. Start-up errors stop it right after that line (mitmproxy checks once its servers are up); a
    # probe request then could hit it mid-exit and make asyncio print a traceback of its own.
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.proc.wait(EXIT_GRACE_SECONDS)
    running = process.proc.poll() is None
    code = process.stop()
    return StartUp(None if running else code, process.output(), sorted(p.name for p in cwd.iterdir()))


@pytest.fixture(scope="module")
def start_ups(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str, str], StartUp]:
    """Every start-up, a few at a time (each takes two seconds of CPU, mostly imports)."""
    with ThreadPoolExecutor(4) as pool:
        futures = {case: pool.submit(start_up, *case, tmp_path_factory.mktemp("cwd")) for case in START_UPS}
        return {case: future.result() for case, future in futures.items()}


@pytest.mark.parametrize(("tool", "option", "value"), START_UPS)
def test_a_bad_value_stops_the_proxy_naming_the_option(
    start_ups: dict[tuple[str, str, str], StartUp], tool: str, option: str, value: str
) -> None:
    """Property 7: a bad value of any option makes mitmdump and mitmweb exit non-zero at start-up, with one
    line naming the option and no traceback; it never runs as a plain proxy that passes raw tokens."""
    outcome = start_ups[(tool, option, value)]
    assert outcome.code is not None, f"{tool} kept running as a proxy:\n{outcome.output}"
    assert outcome.code != 0, f"exit code 0:\n{outcome.output}"
    assert "Traceback" not in outcome.output, f"a traceback:\n{outcome.output}"
    naming = [line for line in outcome.output.splitlines() if option in line]
    assert len(naming) == 1, f"expected one line naming {option}:\n{outcome.output}"
    assert outcome.left_behind in ([], ["store"]), f"created {outcome.left_behind} in its working directory"


# ---------------------------------------------------------------------------------------------------------
# Edits through mitmweb's HTTP API (what its Options page sends)


@dataclass
class Web:
    proxy: Proxy
    session: requests.Session
    base: str
    cwd: Path

    def options(self) -> dict:
        return self.session.get(self.base + "/options", timeout=30).json()

    def put(self, **update: object) -> requests.Response:
        # mitmweb (tornado) checks the X-XSRFToken header against its XSRF cookie: any matching pair will do.
        return self.session.put(
            self.base + "/options", json=update, headers={"X-XSRFToken": "0123"}, timeout=30
        )


@pytest.fixture(scope="module")
def web(idp: ManagedProcess, api: ManagedProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    assert idp.url and api.url
    cwd = tmp_path_factory.mktemp("web")
    with contextlib.chdir(cwd):  # a store value taken for a relative directory would land here
        proxy = start_proxy(idp.url, api.url, store=str(cwd / "store"), tool="mitmweb")
    try:
        assert proxy.web_url
        session = requests.Session()
        session.trust_env = False
        assert session.get(proxy.web_url, timeout=30).ok  # the URL's token logs the session in
        session.cookies.set("_mitmproxy_xsrf", "0123")
        yield Web(proxy, session, proxy.web_url.split("?")[0].rstrip("/"), cwd)
    finally:
        proxy.stop()


def web_bad_values() -> list[tuple[str, object]]:
    """Each option with JSON values of the wrong type or meaning: for an int, ``true`` is no number of
    seconds."""
    cases: list[tuple[str, object]] = []
    for option, values in BAD_VALUES.items():
        if values is INT_VALUES:
            cases += [(option, v) for v in (True, False, "abc", 1.5, -1)]
        elif values == ["maybe"]:
            cases += [(option, "maybe"), (option, 1)]
        elif option == "splittoken_algorithms":
            cases += [(option, [v]) for v in values]
        else:
            cases += [(option, v) for v in values]
    return cases


@pytest.mark.parametrize(("option", "value"), web_bad_values())
def test_a_bad_edit_in_mitmweb_is_refused_and_the_old_value_kept(
    web: Web, option: str, value: object
) -> None:
    """Property 7: an edit in mitmweb's options with a bad value is refused, and the old value stays."""
    before = web.options()[option]["value"]
    try:
        response = web.put(**{option: value})
        after = web.options()[option]["value"]
    finally:
        web.put(**{option: before})  # an edit let through must not change what the next case starts from
    assert after == before and type(after) is type(before), f"{option} became {after!r}"
    assert response.status_code == 400, response.text


def test_mitmweb_still_splits_after_bad_edits(web: Web) -> None:
    """Property 7: after the refused edits the addon is still loaded and splits tokens, and no store value
    was taken for a directory in mitmweb's working directory."""
    response = requests.post(
        web.proxy.idp_url + TOKEN_PATH, data={"grant_type": "client_credentials", **CLIENT}, timeout=30
    )
    assert response.status_code == 200, response.text
    assert "." not in response.json()["access_token"], "the client got a JWT"
    assert sorted(p.name for p in web.cwd.iterdir()) == ["store"]
