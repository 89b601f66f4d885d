"""Public endpoints learned from discovery: what the authorization server's own metadata document names as
fetched without credentials (its key set, the pages a browser opens), so that the public filter can let
exactly those through."""

from __future__ import annotations

import json
import re
import urllib.parse

from mitmproxy import http
from mitmproxy.net.http import url

from .routing import endpoint, normalised_path, origin

_DISCOVERY_DOCUMENT = re.compile(r"/\.well-known/(openid-configuration|oauth-authorization-server)\b")
_DISCOVERY_LIMIT = 256 * 1024
# What a discovery document names that clients fetch, or browsers open, without credentials.
_PUBLIC_METADATA = ("jwks_uri", "authorization_endpoint", "end_session_endpoint")
_DISCOVERED_KEPT = 256


class Discovered:
    """Endpoints that discovery documents passing through the proxy name as public (``_PUBLIC_METADATA``):
    the key set, and the pages a browser opens. Only from the issuer's own document, at its well-known place
    (OIDC Discovery §4, RFC 8414 §3), and only endpoints on the issuer's origin beneath its path: an API that
    echoes a request back as JSON cannot make its own paths public."""

    def __init__(self) -> None:
        self._endpoints: dict[str, None] = {}  # origin + normalised path, oldest first

    def serve(self, flow: http.HTTPFlow) -> bool:
        return bool(self._endpoints) and flow.request.method == "GET" and endpoint(flow) in self._endpoints

    def learn(self, flow: http.HTTPFlow) -> None:
        request, response = flow.request, flow.response
        if request.method != "GET" or response is None or response.status_code != 200:
            return
        path = normalised_path(request.path).partition("?")[0]
        found = _DISCOVERY_DOCUMENT.search(path)
        if not found or len(response.raw_content or b"") > _DISCOVERY_LIMIT:
            return
        try:
            document = json.loads(response.get_content() or b"")
        except ValueError:
            return
        issuer = document.get("issuer") if isinstance(document, dict) else None
        if not isinstance(issuer, str):
            return
        issuer_url = urllib.parse.urlsplit(issuer)
        # The names the client used for this server, or the server's own.
        here = url.hostport(request.scheme, request.host, request.port)
        names = {(request.host_header or "").lower(), here.lower()}
        home = issuer_url.path.rstrip("/")
        if issuer_url.netloc.lower() not in names or path not in (
            f"{home}/.well-known/{found[1]}",
            f"/.well-known/{found[1]}{home}",
        ):
            return
        for name in _PUBLIC_METADATA:
            named = document.get(name)
            where = urllib.parse.urlsplit(named) if isinstance(named, str) else None
            if where is None or where.netloc.lower() != issuer_url.netloc.lower():
                continue
            target = normalised_path(where.path)
            if f"{target}/".startswith(f"{home}/"):
                self._endpoints[origin(flow) + target] = None
        while len(self._endpoints) > _DISCOVERED_KEPT:
            del self._endpoints[next(iter(self._endpoints))]
