"""No token in any log line: every record's message, mitmproxy's own included (a protocol error quotes the
line it could not parse, and a handle or a JWT with it), has its JWSs and handle-like runs cut to the prefix
``state.redact`` leaves; so has what mitmdump's flow printer (the ``dumper`` addon) writes. Installed while
the addon is loaded: the logging record factory, and the printer's stream.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from .state import redact

# A compact JWS or its signing input (a base64url JSON header, '{"' being "eyJ"), or a run of base64url as
# long as most of a handle (a signature: 43 characters and more; printers cut lines at 32).
_SECRET_LIKE = re.compile(r"ey[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_.-]+|[A-Za-z0-9_-]{32,}")


_HEX = re.compile(r"[0-9a-f]+")


def redacted(text: str) -> str:
    return _SECRET_LIKE.sub(_redact_unless_hex, text)


def _redact_unless_hex(found: re.Match[str]) -> str:
    # Lower-case hex is a digest or mitmweb's own token (its URL is printed to be opened), never a handle:
    # those are base64url, and a handle of 43 characters all of them hex is a chance of about 2^-43.
    return found.group() if _HEX.fullmatch(found.group()) else redact(found.group())


class RedactedLogs:
    """The record factory in place while installed; the one before it comes back on ``uninstall``."""

    def __init__(self) -> None:
        self._previous: Callable[..., logging.LogRecord] | None = None
        self._dumper: Any = None

    def install(self, master: Any) -> None:
        if self._previous is None:
            self._previous = logging.getLogRecordFactory()
            logging.setLogRecordFactory(self._record)
        dumper = master.addons.get("dumper")
        if dumper is not None and not isinstance(dumper.outfp, _RedactedStream):
            dumper.outfp, self._dumper = _RedactedStream(dumper.outfp), dumper

    def uninstall(self) -> None:
        if self._previous is not None:
            logging.setLogRecordFactory(self._previous)
            self._previous = None
        if self._dumper is not None and isinstance(self._dumper.outfp, _RedactedStream):
            self._dumper.outfp = self._dumper.outfp.stream
        self._dumper = None

    def _record(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        assert self._previous is not None
        record = self._previous(*args, **kwargs)
        message = record.getMessage()
        if _SECRET_LIKE.search(message):
            record.msg, record.args = redacted(message), None
        return record


class _RedactedStream:
    """A text stream that writes what it is given, redacted."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(redacted(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)
