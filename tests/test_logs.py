"""logs.py: no token in a log line, mitmproxy's own and the flow printer's included."""

from __future__ import annotations

import io
import logging
from types import SimpleNamespace

import pytest

from oauth_flows import make_jwt
from splittoken.logs import RedactedLogs, redacted

HANDLE = "dGhpcy1pcy1hLXNpZ25hdHVyZS1oYW5kbGUtb2YtNDMtY2hhcnMx"


def test_jwses_and_handle_like_runs_are_cut_to_a_prefix() -> None:
    jwt = make_jwt()
    text = redacted(f"Invalid header line: b'X-Debug {jwt}' and {HANDLE} and {jwt.rpartition('.')[0]}")
    assert jwt.split(".")[1][:12] not in text and HANDLE[:12] not in text
    assert f"{jwt[:6]}…" in text and f"{HANDLE[:6]}…" in text
    web = "http://127.0.0.1:8081/?token=" + "0f" * 16
    for kept in ("GET /realms/demo/protocol/openid-connect/certs 200 OK", web):
        assert redacted(kept) == kept  # mitmweb's URL, with its token, is printed to be opened


def test_every_record_and_the_printer_are_redacted_while_installed(caplog: pytest.LogCaptureFixture) -> None:
    """Without it, mitmproxy's protocol errors print the line they could not parse, a handle in it."""
    printer = SimpleNamespace(outfp=io.StringIO())
    master = SimpleNamespace(addons=SimpleNamespace(get=lambda name: printer if name == "dumper" else None))
    logs = RedactedLogs()
    logs.install(master)
    try:
        logging.getLogger("mitmproxy.proxy.server").warning("Bad HTTP request line: b'GET /x?%s'", HANDLE)
        print(f"<< Received invalid content-length header: b'{HANDLE}'", file=printer.outfp)
    finally:
        logs.uninstall()
    logging.getLogger("mitmproxy.proxy.server").warning("after: %s", HANDLE)
    assert HANDLE not in caplog.records[0].getMessage()
    assert HANDLE in caplog.records[1].getMessage()  # uninstalled: the factory before it is back
    assert isinstance(printer.outfp, io.StringIO)
    assert HANDLE not in printer.outfp.getvalue() and f"{HANDLE[:6]}…" in printer.outfp.getvalue()
