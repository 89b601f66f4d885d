"""What the demo identity provider and the echo API share: the HTTP server, request bodies, and start-up.

Standard library only (no mitmproxy): these stand in for servers the proxy sits in front of.
"""

from __future__ import annotations

import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY = 16 * 1024 * 1024


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 drops connections when a proxy opens many at once (benchmarks).
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], verbose: bool):
        super().__init__(address, handler)
        self.verbose = verbose

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-answer is routine in tests; anything else deserves a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError) or self.verbose:
            super().handle_error(request, client_address)


class QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # or keep-alive requests wait ~40 ms each for delayed ACKs

    def log_message(self, *args: Any) -> None:
        if getattr(self.server, "verbose", False):  # quiet by default: tests read our output
            super().log_message(*args)


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request body, framed by Content-Length or chunked transfer-encoding."""
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        chunks, size = [], 0
        while True:
            line = handler.rfile.readline(1024)
            length = int(line.split(b";")[0].strip() or b"x", 16)  # ValueError on junk or EOF
            if length == 0:
                while handler.rfile.readline(1024).strip():  # trailers
                    pass
                return b"".join(chunks)
            size += length
            if size > MAX_BODY:
                raise ValueError("body too large")
            chunks.append(handler.rfile.read(length))
            handler.rfile.readline(8)
    length = int(handler.headers.get("Content-Length") or 0)
    if not 0 <= length <= MAX_BODY:
        raise ValueError("bad Content-Length")
    return handler.rfile.read(length)


def serve(server: DemoServer, name: str, host: str) -> int:
    """Print the ready line tests wait for, then serve until SIGTERM or Ctrl-C, exiting cleanly."""
    # SIGTERM becomes SystemExit, which unwinds serve_forever() like Ctrl-C does: no traceback.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:  # a signal may come as soon as the ready line is out
        print(f"{name} listening on http://{host}:{server.server_address[1]}", flush=True)
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
    return 0
