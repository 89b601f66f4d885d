"""What the demo identity provider and the echo API share: the HTTP server, request bodies, CORS for the
demos' web pages, and start-up.

Standard library only (no mitmproxy): these stand in for servers the proxy sits in front of.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

MAX_BODY = 16 * 1024 * 1024
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
ANY_METHOD = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


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

    def cors_methods(self) -> Sequence[str]:
        """The methods a page on a loopback origin may use on this request's path; empty: no CORS. Any by
        default: the echo API shows what it got to anyone. Subclasses narrow it per path."""
        return ANY_METHOD

    def end_headers(self) -> None:
        # Here rather than in each answer, so that every answer (errors included) is readable by the page.
        # http.server may refuse a request line before it has read any headers: no CORS then.
        request = getattr(self, "headers", None)
        if request is not None and (methods := self.cors_methods()):
            for name, value in cors_headers(request, methods).items():
                self.send_header(name, value)
        super().end_headers()


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


def loopback_origin(url: str) -> str | None:
    """The web origin (``http://host:port``) of an http URL on a loopback host, any port, or None. That is
    where the demos' pages run (RFC 8252 §7.3 loopback redirects)."""
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when it is not a port number
    except ValueError:
        return None
    if parts.scheme != "http" or parts.hostname not in LOOPBACK_HOSTS or parts.username is not None:
        return None
    return f"http://{parts.netloc}" if port != 0 else None


def cors_headers(request: Message, methods: Sequence[str]) -> dict[str, str]:
    """The CORS answer headers (Fetch standard) that let a page on a loopback origin read the answer,
    with a preflight's too when the request is one; none for any other origin or without an Origin."""
    origin = request.get("Origin", "")
    if loopback_origin(origin) != origin:
        return {}
    headers = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": "WWW-Authenticate",
        "Vary": "Origin",
    }
    if request.get("Access-Control-Request-Method"):
        headers |= {
            "Access-Control-Allow-Methods": ", ".join(methods),
            "Access-Control-Allow-Headers": "Authorization, Content-Type, DPoP",
            "Access-Control-Max-Age": "600",
        }
    return headers


def serve(server: DemoServer, name: str, host: str) -> int:
    """Print the ready line tests wait for, then serve until SIGTERM or Ctrl-C, exiting cleanly."""
    # SIGTERM becomes SystemExit, which unwinds serve_forever() like Ctrl-C does: no traceback.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Python leaves SIGINT ignored when the parent ignored it (a job started in the background by a shell):
    # Ctrl-C and `kill -INT` still stop a demo server.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:  # a signal may come as soon as the ready line is out
        print(f"{name} listening on http://{host}:{server.server_address[1]}", flush=True)
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
    return 0
