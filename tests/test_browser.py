"""mitmweb in a real headless Chromium: what a developer sees of the Split Token Flow.

The demo stack runs under mitmweb; a login, an API call with the handle and a call with an unknown handle go
through it with ``requests``. Then the UI must show the addon's flow comments, the refused flow's mark, and
the "Split Token" content view, auto-selected, with the decoded claims and the handles redacted.

Every run leaves a screenshot in the test's tmp_path; ``UPDATE_SCREENSHOT=1`` also writes docs/mitmweb.png.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Locator, Page, ViewportSize, expect, sync_playwright

from stack import CLIENT, ROOT, TOKEN_PATH, Stack, demo_stack

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"  # Debian's: Playwright's own browser download cannot work on a closed network
DOCS_SCREENSHOT = ROOT / "docs" / "mitmweb.png"
# Tall enough for the whole token view without scrolling.
VIEWPORT: ViewportSize = {"width": 1400, "height": 960}
# Without these Chromium keeps trying to reach Google's services, and on a closed network start-up stalls.
# No --user-data-dir: Playwright gives every launch a fresh throw-away one (and refuses one in args).
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-proxy-server",  # mitmweb is on loopback: an http_proxy in CI's environment must not get in between
]  # fmt: skip
TIMEOUT_MS = 15_000  # for each wait; the whole test takes a few seconds when things work
# 43 base64url characters, shaped like a real handle but never issued: the proxy must refuse it.
UNKNOWN_HANDLE = "Zm9yZ2VkLWhhbmRsZS10aGF0LXdhcy1uZXZlci1pc3N1"
# The view's comment on a NumericDate claim: "exp: 1795917814 # 2026-11-29 02:03:34 UTC, in 4m 57s".
UTC_TIME = r"\d+ # \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, "
PATH_SHRINK_PX = 200  # the Path column is wider than a loopback URL needs: room for the comments
NO_ENTRY_SIGN = "\N{NO ENTRY SIGN}"  # mitmweb turns the addon's ":no_entry_sign:" marker into the emoji


def redacted(secret: str) -> str:
    """The addon's redacted form of a handle (addon.redact), spelled out so that a change there shows here."""
    return f"{secret[:6]}…"


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        # Fail, not skip (and in the test, not a fixture, so that it counts as a failure, not an error): a
        # skipped browser test looks green on CI while the UI goes untested.
        pytest.fail(
            f"{CHROMIUM} is missing: the browser test drives Debian's chromium. "
            "Run `make install-system` (as root, or with sudo) to install it.",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS)
        try:
            yield browser
        finally:
            browser.close()


def run_traffic(stack: Stack) -> dict[str, str]:
    """A login, an API call with the access handle, and an API call with a handle nobody issued."""
    session = requests.Session()
    session.trust_env = False  # straight to the loopback listeners, whatever proxy the environment names
    login = session.post(
        stack.token_url,
        data={"grant_type": "password", "username": "alice", "password": "alice-pw", **CLIENT},
        timeout=10,
    )
    assert login.status_code == 200, login.text
    tokens = login.json()
    assert "." not in tokens["access_token"], "the client got a JWT instead of a handle"
    orders = stack.proxy.api_url + "/orders"
    joined = session.get(orders, headers={"Authorization": f"Bearer {tokens['access_token']}"}, timeout=10)
    assert joined.status_code == 200, joined.text
    refused = session.get(orders, headers={"Authorization": f"Bearer {UNKNOWN_HANDLE}"}, timeout=10)
    assert refused.status_code == 401, refused.text
    return tokens


@contextlib.contextmanager
def explained_failure(page: Page, screenshot: Path, stack: Stack) -> Iterator[None]:
    """Turn a failed wait or assertion into one that says where to look: the page as it was, and mitmweb's
    output (which holds only redacted handles, like every log line of the addon)."""
    try:
        yield
    except Exception as e:
        with contextlib.suppress(Exception):
            page.screenshot(path=screenshot, full_page=True)
        raise AssertionError(
            f"{e}\n\nscreenshot of the page: {screenshot}\nmitmweb's output, last lines:\n"
            + "\n".join(stack.proxy.output().splitlines()[-30:])
        ) from e


def show_comment_column(page: Page) -> None:
    """mitmweb 12 shows flow comments in the flow list only in its optional Comment column (otherwise only
    in a flow's Comment tab): turn it on the way a user does, Options → Columns; nothing to do when the
    column is on already (e.g. when the stack starts mitmweb with web_columns including comment)."""
    # "established" once mitmweb's UI has fetched state, flows and options: the checkbox below is not stale.
    expect(page.locator(".connection-indicator.established")).to_be_attached()
    page.locator("header nav").get_by_role("link", name="Options", exact=True).click()
    menu = page.locator(".column-visibility")
    menu.locator("button.column-select").click()
    comment = menu.get_by_label("Comment", exact=True)
    # Not check(): the box follows the server's web_columns option, so it turns checked only after the
    # option's round trip, and check() gives up when the state does not change at once.
    if not comment.is_checked():
        comment.click()
    expect(comment).to_be_checked()
    menu.locator("button.column-select").click()
    page.locator("header nav").get_by_role("link", name="Flow List", exact=True).click()


def open_flow(page: Page, row: Locator, tab: str) -> Locator:
    """Select a flow and one of its detail tabs; returns the content view of that tab."""
    # The path cell: the row's middle may be the quick-action (replay) link when the detail pane is open.
    row.locator("td.col-path").click()
    detail = page.locator(".flow-detail")
    detail.locator("nav").get_by_role("link", name=tab, exact=True).click()
    return detail.locator(".contentview")


def drag(page: Page, grip: Locator, dx: float) -> None:
    box = grip.bounding_box()
    if box:
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + dx, y, steps=5)
        page.mouse.up()


def make_room_for_comments(page: Page) -> None:
    """Give the flow list's Comment column the room the Path column does not need, so that the comments read
    beside the token view. Cosmetic, for the screenshot: nothing asserts on it."""
    drag(page, page.locator(".splitter-x > div"), VIEWPORT["width"] * 0.6 - VIEWPORT["width"] / 2)
    drag(page, page.locator(".flow-table th.col-path .col-resize-handle"), -PATH_SHRINK_PX)
    comment, table = page.locator(".flow-table th.col-comment"), page.locator(".flow-table")
    if (column := comment.bounding_box()) and (room := table.bounding_box()):
        spare = room["x"] + room["width"] - (column["x"] + column["width"]) - 8
        drag(page, comment.locator(".col-resize-handle"), spare)
    page.mouse.move(VIEWPORT["width"] - 1, VIEWPORT["height"] - 1)  # no hover highlight in the picture


@pytest.mark.timeout(90)  # a hung browser or proxy must not hang CI; a good run takes ~5 s
def test_mitmweb_shows_comments_marks_and_the_split_token_view(tmp_path: Path) -> None:
    with chromium() as browser, demo_stack(store=str(tmp_path / "store"), tool="mitmweb") as stack:
        tokens = run_traffic(stack)
        handle, refresh_handle = tokens["access_token"], tokens["refresh_token"]
        assert stack.proxy.web_url, "mitmweb printed no 'Web server listening at' URL"
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)
        screenshot = tmp_path / "mitmweb.png"
        try:
            with explained_failure(page, tmp_path / "failure.png", stack):
                page.goto(stack.proxy.web_url)  # the URL carries mitmweb 12's access token
                show_comment_column(page)

                # The flow list: three flows, told apart by what the addon noted on each.
                rows = page.locator(".flow-table tbody tr.has-request")
                expect(rows).to_have_count(3)
                token_row = rows.filter(has_text=TOKEN_PATH)
                joined_row = rows.filter(has_text="split-token: re-joined")
                refused_row = rows.filter(has_text="split-token: refused")
                short = re.escape(redacted(handle))
                expect(token_row.locator("td.col-comment")).to_have_text(
                    re.compile(rf"^split-token: issued handle {short}, sub=[\w-]+, expires \d\d:\d\d:\d\dZ$")
                )
                expect(joined_row.locator("td.col-comment")).to_have_text(
                    re.compile(rf"^split-token: re-joined handle {short} for sub=[\w-]+$")
                )
                expect(refused_row.locator("td.col-comment")).to_have_text(
                    "split-token: refused: unknown, expired or revoked handle"
                )
                expect(refused_row.locator(".marker")).to_have_text(NO_ENTRY_SIGN)
                expect(token_row.locator(".marker")).to_have_text("")
                expect(joined_row.locator(".marker")).to_have_text("")
                assert handle not in page.locator(".flow-table").inner_text(), "a handle in the flow list"

                # The token response: the Split Token view, chosen by mitmweb itself ("View: auto").
                view = open_flow(page, token_row, "Response")
                expect(view.locator(".controls h5")).to_have_text("Split Token")
                expect(view.locator(".controls")).to_contain_text("View: auto")
                yaml = view.locator("pre")
                expect(yaml).to_contain_text("kept back by the proxy:")
                expect(yaml).to_contain_text("email: alice@example.com")
                expect(yaml).to_contain_text("tenant: acme")
                expect(yaml).to_contain_text(re.compile(rf"exp: {UTC_TIME}in \d"))
                expect(yaml).to_contain_text(re.compile(rf"iat: {UTC_TIME}"))
                expect(yaml).to_contain_text(f"access_token: {redacted(handle)} # the JWT's signature")
                expect(yaml).to_contain_text(f"refresh_token: {redacted(refresh_handle)} # a random handle")
                shown = page.locator(".flow-detail").inner_text()
                assert handle not in shown, "the access handle (the JWT's signature) is shown in full"
                assert refresh_handle not in shown, "the refresh handle is shown in full"

                make_room_for_comments(page)
                expect(yaml).to_contain_text("tenant: acme")  # still rendered after the re-layout
                page.screenshot(path=screenshot)
                if os.environ.get("UPDATE_SCREENSHOT") == "1":
                    shutil.copyfile(screenshot, DOCS_SCREENSHOT)

                # Without the Comment column, a flow's comment is in its Comment tab.
                page.locator(".flow-detail nav").get_by_role("link", name="Comment", exact=True).click()
                expect(page.locator(".flow-detail section")).to_contain_text(
                    f"split-token: issued handle {redacted(handle)}"
                )

                # The API request: the claims of the JWT that went upstream in place of the handle. (mitmweb
                # titles the view "No content" for an empty body, whichever view renders it.)
                yaml = open_flow(page, joined_row, "Request").locator("pre")
                expect(yaml).to_contain_text("event: joined")
                expect(yaml).to_contain_text(f"handle: {redacted(handle)}")
                expect(yaml).to_contain_text("Authorization, forwarded upstream:")
                expect(yaml).to_contain_text("email: alice@example.com")
                expect(yaml).to_contain_text("tenant: acme")
                expect(yaml).to_contain_text(re.compile(rf"exp: {UTC_TIME}in \d"))

                # The refused request: why, and that the proxy answered it (the API never saw it).
                yaml = open_flow(page, refused_row, "Request").locator("pre")
                expect(yaml).to_contain_text("refused: unknown, expired or revoked handle")
                expect(yaml).to_contain_text("answered by the proxy: 401")
        finally:
            page.close()
        assert screenshot.exists(), f"no screenshot at {screenshot}"
