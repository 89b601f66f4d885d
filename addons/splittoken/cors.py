"""CORS on the answers the proxy makes itself, so that a browser app can read them.

Without ``Access-Control-Allow-Origin`` a browser hides a 401 for an expired handle, a 400 ``invalid_grant``
or a 503 from the page as a network error, and the app cannot tell "refresh now" from "offline". An origin
is allowed what the upstream allowed it on the same route's origin (learnt from the upstream's answers,
preflights included), or what ``splittoken_cors_origins`` names. Never ``*`` with credentials.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from mitmproxy import http

from .routing import origin

# What a page must read of a refusal beyond the CORS-safelisted headers.
EXPOSED = "WWW-Authenticate, Retry-After, DPoP-Nonce"
_ANSWER_HEADERS = (
    "Access-Control-Allow-Origin", "Access-Control-Allow-Credentials", "Access-Control-Expose-Headers",
)  # fmt: skip
# Grants remembered, most recent last: a client choosing Origin values at will cannot grow the table.
_GRANTS_KEPT = 1024


@dataclass(frozen=True)
class Grant:
    allow_origin: str  # the requesting origin, or "*"
    credentials: bool


class Cors:
    def __init__(self) -> None:
        self.origins: frozenset[str] = frozenset()  # splittoken_cors_origins, lower case; "*" for any
        self._grants: OrderedDict[tuple[str, str], Grant] = OrderedDict()

    def learn(self, flow: http.HTTPFlow) -> None:
        """Remember what an upstream's answer grants the requesting origin on this route's origin."""
        response, web_origin = flow.response, flow.request.headers.get("origin")
        if response is None or not web_origin:
            return
        allowed = response.headers.get("access-control-allow-origin")
        if allowed == "*":
            grant = Grant("*", False)  # browsers refuse * with credentials
        elif allowed == web_origin:
            grant = Grant(web_origin, response.headers.get("access-control-allow-credentials") == "true")
        else:
            return
        key = (origin(flow), web_origin)
        self._grants[key] = grant
        self._grants.move_to_end(key)
        if len(self._grants) > _GRANTS_KEPT:
            self._grants.popitem(last=False)

    def grant(self, flow: http.HTTPFlow) -> Grant | None:
        web_origin = flow.request.headers.get("origin")
        if not web_origin:
            return None
        if web_origin.lower() in self.origins:
            # Named by the operator: the proxy's own answers hold nothing a page of that origin may not read.
            return Grant(web_origin, True)
        if "*" in self.origins:
            return Grant("*", False)
        return self._grants.get((origin(flow), web_origin))

    def allow(self, flow: http.HTTPFlow, response: http.Response) -> None:
        """Give an answer of the proxy's (a refusal, a replayed or shared answer) the CORS headers this
        request's origin may have; an answer copied from another client's request loses that one's."""
        if "origin" not in flow.request.headers:
            return
        headers = response.headers
        for name in _ANSWER_HEADERS:
            headers.pop(name, None)
        vary = [v.strip() for value in headers.get_all("vary") for v in value.split(",") if v.strip()]
        if not any(v.lower() in ("origin", "*") for v in vary):
            headers["Vary"] = ", ".join([*vary, "Origin"])
        grant = self.grant(flow)
        if grant is None:
            return
        headers["Access-Control-Allow-Origin"] = grant.allow_origin
        if grant.credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        headers["Access-Control-Expose-Headers"] = EXPOSED
