"""The routes the proxy serves, built from one Settings and one Vault, and which of them each hook goes to.

Rebuilt on every reconfiguration; what must outlive one (refreshes in flight, what discovery documents and
token endpoints taught) is the shell's and handed in.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable

import jwt
from mitmproxy import http
from mitmproxy.net.http import status_codes

from . import leaks, policy, routing
from .answers import Answers, to_response
from .api_route import ApiRoute
from .discovery import Discovered
from .events import Events
from .introspect_route import IntrospectRoute
from .messages import request_body
from .refresh import Flights, Refreshes
from .revoke_route import RevokeRoute
from .routing import AuthorizationServers, logged_path
from .settings import Settings
from .state import FlowState
from .token_route import TokenRoute
from .vault import Vault

logger = logging.getLogger("splittoken")

INTERNAL_ERROR = policy.bad_gateway("internal error")


class Routes:
    def __init__(
        self, settings: Settings, vault: Vault, answers: Answers, events: Events, flights: Flights,
        discovered: Discovered, authorization_servers: AuthorizationServers, jwks: jwt.PyJWKClient | None,
    ) -> None:  # fmt: skip
        self.answers = answers
        self.authorization_servers = authorization_servers
        self.refreshes = Refreshes(vault, answers, flights, lease_seconds=settings.refresh_lease)
        self.api = ApiRoute(settings, vault, answers, events, discovered)
        self.token = TokenRoute(settings, vault, answers, events, self.refreshes, jwks)
        self.revoke = RevokeRoute(vault, answers, events, self.refreshes)
        self.introspect = IntrospectRoute(vault, answers, events)
        # The endpoints of the authorization server whose requests carry handles in their bodies.
        self.endpoints: dict[str, TokenRoute | RevokeRoute | IntrospectRoute] = {
            "token": self.token, "revoke": self.revoke, "introspect": self.introspect,
        }  # fmt: skip

    async def request(self, flow: http.HTTPFlow, st: FlowState) -> bool:
        """A request the filters took for an endpoint's, once its body is known. False: no route of ours
        after all."""
        body = request_body(flow.request)
        if routing.is_endpoint_request(st.route, body, flow.request.headers.get("authorization", "")):
            work = self.endpoints[st.route].request(flow, st)
        elif st.fallback == "api":
            st.route = "api"
            work = self.api.request(flow, st)
        else:
            return False
        await self.answers.guard(flow, st, work, policy.STORE_UNAVAILABLE)
        if flow.response:
            self.refreshes.settle(flow, st)  # answered here: clients waiting on this refresh get the same
        return True

    def responseheaders(self, flow: http.HTTPFlow, st: FlowState) -> None:
        if flow.response:
            # The reason phrase is free text no check reads (``HTTP/1.1 200 <the JWT>``), and no client needs.
            flow.response.reason = status_codes.RESPONSES.get(flow.response.status_code, "")
        if flow.response and flow.response.stream and (st.route != "api" or st.authorization_server):
            # mitmproxy streams what exceeds stream_large_bodies (kept at or above splittoken_max_body by
            # configure), and a streamed token response would reach the client before it is judged: too
            # large to parse anyway, it is cut off instead.
            logger.error("token response over stream_large_bodies on %s: closed", logged_path(flow))
            flow.kill()
        elif st.route == "api":
            try:
                self.api.responseheaders(flow, st)
            except Exception as e:
                # Its headers could show the token, and its body would pass unscanned: it never leaves.
                logger.error("split-token failed on %s: %s; closed", logged_path(flow), type(e).__name__)
                flow.kill()

    def response(self, flow: http.HTTPFlow, st: FlowState) -> Awaitable[None] | None:
        """An API's answer is judged at once (the common case: nothing to await); the others as below."""
        if st.route == "api" and not st.authorization_server:
            self.answers.guard_now(flow, st, lambda: self.api.response(flow, st), INTERNAL_ERROR)
            return None
        return self._endpoint_response(flow, st)

    async def _endpoint_response(self, flow: http.HTTPFlow, st: FlowState) -> None:
        if st.route == "token":
            try:
                await self.answers.guard(
                    flow, st, self.token.response(flow, st), policy.bad_gateway("internal error")
                )
            finally:
                self.refreshes.settle(flow, st)
        elif st.route == "revoke":
            await self.answers.guard(flow, st, self.revoke.response(flow, st), policy.STORE_UNAVAILABLE)
        elif st.route == "introspect":
            self.introspect.response(flow, st)
        else:
            self.answers.guard_now(flow, st, lambda: self.api.response(flow, st), INTERNAL_ERROR)
            if not st.answered:
                # A second line behind the filters: whatever the authorization server answers is judged as a
                # token response would be, so a path spelling no filter foresaw cannot carry a token out.
                work = self.token.response(flow, st, strict=False)
                await self.answers.guard(flow, st, work, INTERNAL_ERROR)
        if st.event == "split":
            self.authorization_servers.learn(routing.endpoint(flow))

    def error(self, flow: http.HTTPFlow, st: FlowState) -> None:
        self.refreshes.settle(flow, st, to_response(policy.bad_gateway("authorization server unreachable")))
        if flow.error and leaks.quotes_the_wire(flow.error.msg) and flow.killable:
            # The upstream answered something unreadable, and mitmproxy's own 502 page would quote it, tokens
            # and all: closed instead. An error that quotes nothing (refused, reset, timed out) keeps its 502.
            logger.error("unreadable answer from upstream on %s: closed", logged_path(flow))
            flow.kill()


def jwks_client(url: str, previous: jwt.PyJWKClient | None) -> jwt.PyJWKClient | None:
    """The JWKS client for ``splittoken_jwks_url``; the previous one (and its cached keys) if unchanged."""
    if not url:
        return None
    if previous is not None and previous.uri == url:
        return previous
    return jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=5)
