"""``make demo`` (scripts/demo.py) run for real, its output read as a reader of a log or a blog post would."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from stack import ROOT

pytestmark = pytest.mark.e2e

# Any colour, 16-colour to truecolor; bold and italics are fine without colour.
COLOR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-9]|4[0-9]|9[0-7]|10[0-7])(?:;[0-9;]*)?m")


def run_demo(*args: str, **env: str) -> str:
    # A fixed width, whatever the terminal running the tests: rich wraps non-tty output at COLUMNS (80).
    base = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), *args],
        check=False, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        env=base | {"COLUMNS": "80"} | env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def steps() -> list[str]:
    """The output cut at each step's heading: the stack banner, then steps 1 to 5."""
    output = run_demo()
    assert "\x1b[" not in output, "non-tty output must be plain text"
    parts = re.split(r"^Step \d: ", output, flags=re.MULTILINE)
    assert len(parts) == 6, output
    return parts


def test_a_raw_jwt_shows_its_claims(steps: list[str]) -> None:
    raw = steps[1]
    for fact in ("RS256", "alice@example.com", "acme", "admin", "realm_access"):
        assert fact in raw
    assert re.search(r"exp +\d+ +\(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, in \d+m", raw), raw


def test_the_handle_shows_nothing(steps: list[str]) -> None:
    handle = steps[2]
    assert "access_token" in handle
    assert "not a compact JWS" in handle
    for secret in ("alice@example.com", "acme", "admin", "eyJ"):
        assert secret not in handle


def test_the_api_receives_the_whole_jwt(steps: list[str]) -> None:
    api = steps[3]
    assert "Authorization: Bearer eyJ" in api
    for fact in ("alice@example.com", "acme", "admin"):
        assert fact in api


def test_tampered_and_stolen_credentials_get_401_and_never_reach_the_api(steps: list[str]) -> None:
    refused = steps[4]
    assert refused.count("HTTP 401") == 2
    assert refused.count('WWW-Authenticate: Bearer realm="splittoken", error="invalid_token"') == 2
    assert "unknown, expired or revoked handle" in refused
    counts = re.search(r"echo API has received: (\d+) before, (\d+) after", refused)
    assert counts, refused
    assert counts[1] == counts[2]


def test_a_stolen_dpop_bound_handle_is_refused_every_way(steps: list[str]) -> None:
    bound = steps[5]
    assert bound.count("HTTP 401") == 3
    assert bound.count("WWW-Authenticate: DPoP") == 3
    # The demo itself checks that the echo API saw none of the three: run_demo asserts its exit code 0.
    assert "Authorization: Bearer <JWT>, and no proof" in bound


def test_no_color_on_a_terminal() -> None:
    # FORCE_COLOR makes rich treat the pipe as a terminal: --no-color must still keep colours out.
    output = run_demo("--no-color", FORCE_COLOR="1")
    assert not COLOR.search(output)
    assert "Step 4: a tampered handle" in output
