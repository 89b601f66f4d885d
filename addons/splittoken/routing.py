"""Which route a flow is, and where it really goes.

A route is decided on what the server will see, never on what the client says: the destination is the
connection's, named as mitmproxy verified it, not the Host header.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from mitmproxy import http
from mitmproxy.flowfilter import TFilter
from mitmproxy.proxy.mode_specs import ReverseMode

from .bodies import TokenBody
from .settings import Settings
from .state import Route


@dataclass(frozen=True)
class Classified:
    """A flow's route as its headers tell. A token or revocation endpoint is only a candidate until its body
    shows a token request (``is_endpoint_request``); failing that it is ``fallback``: an API call, or none."""

    route: Route | None
    fallback: Route | None = None
    endpoint: str = ""  # ``endpoint(flow)``, worked out once for the flow's hooks
    by_body: bool = False  # no filter named it: only its body can make it a token request


# A Host header as RFC 3986 has an authority (no "/", "?", "#" or "@"): filters read it as part of the URL,
# and one holding a path ("x/.well-known/jwks.json?") would make any path look public.
_AUTHORITY = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:\[\]%-]*")


def host_is_an_authority(flow: http.HTTPFlow) -> bool:
    """Whether the Host header is an authority (RFC 3986 §3.2: no "/", "?", "#" or "@"). Filters read it as
    part of the URL (mitmproxy's pretty_url): one holding "?" or a path would hide the real path from them."""
    return bool(_AUTHORITY.fullmatch(flow.request.host_header or ""))


def classify(flow: http.HTTPFlow, settings: Settings) -> Classified:
    """Filters are matched on the path as the server reads it (``normalised_path``), never on the raw text:
    ``/token/``, ``/x/../token``, ``/%74oken`` or ``/token#x`` are the token endpoint to a lenient server."""
    return _as_server_reads(flow, lambda path: _classified(flow, settings, path))


def _classified(flow: http.HTTPFlow, settings: Settings, path: str) -> Classified:
    api = settings.api_filter(flow) if settings.api_filter is not None else in_reverse_mode(flow)
    fallback: Route | None = "api" if api else None
    route: Route | None = None
    if settings.revoke_filter and settings.revoke_filter(flow):
        route = "revoke"
    elif settings.introspect_filter and settings.introspect_filter(flow):
        route = "introspect"
    elif settings.token_filter and settings.token_filter(flow):
        route = "token"
    here = origin(flow) + path.partition("?")[0]
    if route is None and fallback is None:
        if flow.request.method == "POST" and in_reverse_mode(flow):
            # A token request is what its body says (``is_endpoint_request``), whatever its path: a spelling
            # no filter foresaw (``/token.json``, a format suffix Rails routes accept) is judged all the same.
            return Classified("token", None, here, by_body=True)
        return Classified(None)
    return Classified(route, fallback, here) if route else Classified(fallback, None, here)


def matches(flow_filter: TFilter, flow: http.HTTPFlow) -> bool:
    """One filter's verdict on the path as the server reads it (``normalised_path``), as ``classify``'s."""
    return _as_server_reads(flow, lambda _: bool(flow_filter(flow)))


def _as_server_reads[T](flow: http.HTTPFlow, judge: Callable[[str], T]) -> T:
    """``judge(path)`` with the request's path normalised meanwhile, so that filters read it too; then the
    path is as the client spelt it again: the request goes upstream unchanged."""
    request = flow.request
    raw = request.path
    path = normalised_path(raw)
    if path == raw:  # most requests: no need to touch the request at all
        return judge(path)
    request.path = path
    try:
        return judge(path)
    finally:
        request.path = raw


class AuthorizationServers:
    """Where token endpoints have answered with tokens: their origin and directory (``…/openid-connect/``).
    Requests going there on other routes are answered as the authorization server's, whatever their path."""

    def __init__(self) -> None:
        self._homes: set[str] = set()

    def learn(self, token_endpoint: str) -> None:
        self._homes.add(token_endpoint.rpartition("/")[0] + "/")

    def serve(self, endpoint: str) -> bool:
        """Whether ``endpoint`` (a flow's ``endpoint``) is at one of them."""
        here = endpoint + "/"
        return any(here.startswith(home) for home in self._homes)


def is_endpoint_request(route: Route, body: TokenBody | None, authorization: str) -> bool:
    """Whether a request the filters took for a token (or revocation) request is one: a grant type (or a
    token) and a client that identifies itself (Basic, client_id, client_assertion: RFC 6749 §3.2.1,
    RFC 7009 §2.1). Anything else at such a path (``POST /api/v1/token`` with a handle, or with nothing) is
    an API call, judged as one."""
    if body is None:
        return False
    wanted = "grant_type" if route == "token" else "token"
    if not isinstance(body.fields.get(wanted), str):
        return False
    if route == "token" and body.fields["grant_type"] == "refresh_token":
        return True  # RFC 6749 §6: a public client refreshes without identifying itself
    scheme = authorization.strip().partition(" ")[0].lower()
    # RFC 7662 §2.1: a protected resource may authenticate its introspection calls with a bearer token.
    if scheme == "basic" or (route == "introspect" and scheme == "bearer"):
        return True
    return any(isinstance(body.fields.get(name), str) for name in ("client_id", "client_assertion"))


def normalised_path(target: str, *, decoded_slashes: bool = True) -> str:
    """A request target's path as lenient servers route it, its query kept: no fragment, no ``;`` path
    parameters, every percent-escape undone (some servers decode ``%2F`` before routing), dot segments
    removed (RFC 3986 §5.2.4), empty segments and a trailing slash dropped. ``decoded_slashes=False``: as
    servers that keep an encoded ``/`` inside its segment route it (``..%2F`` is then no dot segment)."""
    path, sep, query = target.partition("#")[0].partition("?")
    segments: list[str] = []
    for raw in path.split("/"):
        decoded = urllib.parse.unquote(raw.partition(";")[0])
        for part in decoded.split("/") if decoded_slashes else [decoded]:
            if part == "..":
                if segments:
                    segments.pop()
            elif part not in ("", "."):
                segments.append(part)
    return "/" + "/".join(segments) + (f"?{query}" if sep else "")


def endpoint(flow: http.HTTPFlow) -> str:
    """The endpoint a request goes to: its origin and normalised path, no query. Handles are bound to the
    token endpoint that issued them."""
    return origin(flow) + normalised_path(flow.request.path).partition("?")[0]


def _endpoints(flow: http.HTTPFlow) -> set[str]:
    """``endpoint(flow)`` as every kind of server reads an encoded ``/``: a real token goes only where all
    of them agree it goes."""
    kept = normalised_path(flow.request.path, decoded_slashes=False)
    return {endpoint(flow), origin(flow) + kept.partition("?")[0]}


def issued_here(issuer: str, flow: http.HTTPFlow) -> bool:
    """Whether ``flow`` goes to the token endpoint ``issuer``, the only one its refresh handles work at."""
    return _endpoints(flow) == {issuer} if _has_path(issuer) else issuer == origin(flow)


def may_revoke_here(issuer: str, flow: http.HTTPFlow) -> bool:
    """Whether ``flow`` goes to where the token endpoint ``issuer`` revokes its tokens: the same origin and
    the token endpoint's own directory (Keycloak …/openid-connect/revoke, Auth0 /oauth/revoke, oidc-provider
    /token/revocation), never an API path beside it."""
    if not _has_path(issuer):
        return issuer == origin(flow)
    home = issuer.rpartition("/")[0] + "/"
    return all(here.startswith(home) for here in _endpoints(flow))


def _has_path(issuer: str) -> bool:
    # Records written before handles were bound to endpoints name only an origin (scheme://name:port).
    return "/" in issuer.partition("://")[2]


def in_reverse_mode(flow: http.HTTPFlow) -> bool:
    return isinstance(flow.client_conn.proxy_mode, ReverseMode)


def destination_name(flow: http.HTTPFlow) -> str:
    """The name of where a request really goes, whatever its Host header says. Outside reverse mode the
    client picks both. When the destination is an address (transparent, local, WireGuard modes), the name it
    is known by is the TLS server name, which mitmproxy verifies against the upstream certificate; plain
    HTTP to a bare address has no name but the address."""
    host = flow.request.host.lower()
    if ":" not in host and not host[-1:].isdigit():
        return host  # a name, not an address: an IPv4 address ends in a digit, an IPv6 one has colons
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    sni = flow.client_conn.sni if flow.request.scheme == "https" else None
    return sni.lower() if sni else host


def destination_is_named(flow: http.HTTPFlow) -> bool:
    """Whether the Host header names the real destination (a plain-HTTP request to a bare address that
    says another name cannot be checked, and is not joined)."""
    named = flow.request.pretty_host.lower()
    return named in (flow.request.host.lower(), destination_name(flow))


def origin(flow: http.HTTPFlow) -> str:
    """The token endpoint a handle came from, or a refresh or revocation goes to: scheme, name, port."""
    return f"{flow.request.scheme}://{destination_name(flow)}:{flow.request.port}"


def is_cors_preflight(flow: http.HTTPFlow) -> bool:
    return flow.request.method == "OPTIONS" and "access-control-request-method" in flow.request.headers


def logged_path(flow: http.HTTPFlow) -> str:
    # Without the query: a client may put a token there (RFC 6750 §2.3 access_token=…).
    return flow.request.path.partition("?")[0][:80]
