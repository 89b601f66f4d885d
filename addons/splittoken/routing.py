"""Which route a flow is, and where it really goes.

A route is decided on what the server will see, never on what the client says: the destination is the
connection's, named as mitmproxy verified it, not the Host header.
"""

from __future__ import annotations

import ipaddress

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ReverseMode

from .options import Settings
from .state import Route


def classify(flow: http.HTTPFlow, settings: Settings) -> Route | None:
    if settings.revoke_filter and settings.revoke_filter(flow):
        return "revoke"
    if settings.token_filter and settings.token_filter(flow):
        return "token"
    if settings.api_filter is not None:
        return "api" if settings.api_filter(flow) else None
    return "api" if in_reverse_mode(flow) else None


def in_reverse_mode(flow: http.HTTPFlow) -> bool:
    return isinstance(flow.client_conn.proxy_mode, ReverseMode)


def destination_name(flow: http.HTTPFlow) -> str:
    """The name of where a request really goes, whatever its Host header says. Outside reverse mode the
    client picks both. When the destination is an address (transparent, local, WireGuard modes), the name it
    is known by is the TLS server name, which mitmproxy verifies against the upstream certificate; plain
    HTTP to a bare address has no name but the address."""
    host = flow.request.host.lower()
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
