#!/usr/bin/env python3
"""An echo API for splittoken's demos and end-to-end tests: it shows exactly what reached the API.

No mitmproxy on purpose (stdlib http.server via demo_http.py, pyjwt).

    python scripts/echo_api.py [--host 127.0.0.1] [--port 0] [--verbose]

Port 0 picks a free port. Once listening it prints one line: ``echo-api listening on http://HOST:PORT``.

Any method on any path answers 200 JSON:
    {"method": ..., "path": <path without the query, as received>, "query": <raw query string>,
     "headers": [[name, value], ...] (received order and spelling), "body": <text, UTF-8 with replacement>,
     "jwt_claims": {...}}   (only for Authorization: Bearer <JWT>; decoded WITHOUT verification)
except:
    /_stats        {"requests": n, "authorizations": [each Authorization header received, in order]}
    POST /_reset   zeroes those.
    /_bench        {"ok": true}, nothing echoed, decoded or recorded: what `make bench` calls, so that the
                   API's own work and the answer's size are the same behind every proxy compared (a real API
                   does not echo the token it was sent).
Request bodies may come with Content-Length or chunked; HEAD and keep-alive work.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import Any
from urllib.parse import urlsplit

import jwt

from demo_http import DemoServer, QuietHandler, read_body, serve


class Stats:
    """What reached the API, so that tests can tell what the proxy forwarded."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.authorizations: list[str] = []

    def record(self, authorizations: list[str]) -> None:
        with self.lock:
            self.requests += 1
            self.authorizations.extend(authorizations)

    def reset(self) -> None:
        with self.lock:
            self.requests, self.authorizations = 0, []

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"requests": self.requests, "authorizations": list(self.authorizations)}


def bearer_claims(authorization: str) -> dict[str, Any] | None:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    try:
        # No verification on purpose: the demo shows what the API received, valid or not.
        return jwt.decode(token.strip(), options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None


class Handler(QuietHandler):
    server: EchoServer

    def __getattr__(self, name: str) -> Any:
        # http.server dispatches to do_<METHOD> and answers 501 when there is none: echo every method.
        if name.startswith("do_"):
            return self.handle_any
        raise AttributeError(name)

    def handle_any(self) -> None:
        try:
            body = read_body(self)
        except ValueError as exc:
            self.close_connection = True  # the stream is out of sync: do not read another request
            self.send(400, {"error": "invalid_request", "error_description": str(exc)})
            return
        url = urlsplit(self.path)
        if url.path == "/_bench":
            self.send(200, {"ok": True})
        elif url.path == "/_stats":
            self.send(200, self.server.stats.snapshot())
        elif url.path == "/_reset" and self.command == "POST":
            self.server.stats.reset()
            self.send(200, self.server.stats.snapshot())
        else:
            self.send(200, self.echo(url.path, url.query, body))

    def echo(self, path: str, query: str, body: bytes) -> dict[str, Any]:
        headers = [[name, value] for name, value in self.headers.items()]
        authorizations = self.headers.get_all("Authorization") or []
        self.server.stats.record(authorizations)
        answer = {
            "method": self.command,
            "path": path,
            "query": query,
            "headers": headers,
            "body": body.decode("utf-8", errors="replace"),
        }
        claims = bearer_claims(authorizations[0]) if len(authorizations) == 1 else None
        if claims is not None:
            answer["jwt_claims"] = claims
        return answer

    def send(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


class EchoServer(DemoServer):
    def __init__(self, address: tuple[str, int], verbose: bool):
        super().__init__(address, Handler, verbose)
        self.stats = Stats()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    server = EchoServer((args.host, args.port), args.verbose)
    return serve(server, "echo-api", args.host)


if __name__ == "__main__":
    sys.exit(main())
