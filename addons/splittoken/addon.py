"""The mitmproxy shell of the Split Token Flow: options, hooks and commands.

Each hook is a guard plus one call into the route the flow belongs to (api_route, token_route, revoke_route);
settings are parsed once in ``configure``. Everything that can fail fails closed: the client gets an error
answer, never a token.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import Counter
from collections.abc import Awaitable
from typing import Any

import jwt
from mitmproxy import command, ctx, exceptions, http

from . import options, policy, routing
from .answers import Answers, to_response
from .api_route import ApiRoute, Discovered
from .errors import OptionInvalid, StoreUnavailable
from .introspect_route import IntrospectRoute
from .messages import request_body
from .options import Settings
from .refresh import Flights, Refreshes
from .revoke_route import RevokeRoute
from .routing import logged_path
from .state import META, FlowState, redact
from .store import open_store
from .token_route import TokenRoute
from .vault import Vault, describe

logger = logging.getLogger("splittoken")

PURGE_INTERVAL_SECONDS = 300


class SplitToken:
    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.vault: Vault | None = None
        self.counters: Counter[str] = Counter()
        self.answers = Answers(self.counters)
        self.flights: Flights = {}
        # What the addon knows of each flow in flight; published to flow.metadata without its secrets.
        self.flows: weakref.WeakKeyDictionary[http.HTTPFlow, FlowState] = weakref.WeakKeyDictionary()
        self.authorization_servers = routing.AuthorizationServers()
        self.discovered = Discovered()  # public endpoints named by discovery documents that passed
        # Set when the options the proxy started with are unusable: every flow is refused until fixed.
        self.misconfigured: str | None = None
        self.jwks: jwt.PyJWKClient | None = None
        self._purger: asyncio.Task[None] | None = None

    def load(self, loader: Any) -> None:
        options.declare(loader)
        # mitmproxy drops a script whose --set value does not convert (an int option set to "abc") and runs
        # on as a plain proxy, silently. Converting our values here turns that into an error at start-up,
        # which makes mitmdump and mitmweb exit.
        for problem in options.take_unconvertible(loader.master.options):
            self._misconfigured(problem)

    def configure(self, updated: set[str]) -> None:
        if not updated & (options.NAMES | options.MITMPROXY_NAMES):
            return
        try:
            settings = options.parse_settings(ctx.options)
            vault = self._vault_for(settings)
        except OptionInvalid as e:
            if self.settings is None:
                # At start-up mitmproxy would log the OptionsError with a traceback; one line says it all.
                return self._misconfigured(str(e))
            raise exceptions.OptionsError(str(e)) from None
        for warning in settings.warnings:
            logger.warning(warning)
        self.settings, self.vault, self.misconfigured = settings, vault, None
        self._build_routes(settings, vault)

    def _vault_for(self, settings: Settings) -> Vault:
        """The open vault when the store is unchanged (only the leeway may differ), else a new one."""
        previous = self.settings
        if (
            self.vault
            and previous
            and (previous.store, previous.store_timeout, previous.cache_size)
            == (settings.store, settings.store_timeout, settings.cache_size)
        ):
            self.vault.leeway = settings.leeway
            return self.vault
        try:
            store = open_store(settings.store, timeout=settings.store_timeout)
        except (StoreUnavailable, ValueError) as e:
            raise OptionInvalid("splittoken_store", str(e)) from None
        if self.vault:
            self.vault.close()
        logger.info("splittoken: handles in %r", store)
        return Vault(store, leeway=settings.leeway, cache_size=settings.cache_size)

    def _build_routes(self, settings: Settings, vault: Vault) -> None:
        if not settings.jwks_url:
            self.jwks = None
        elif self.jwks is None or self.jwks.uri != settings.jwks_url:
            self.jwks = jwt.PyJWKClient(settings.jwks_url, cache_keys=True, lifespan=300, timeout=5)
        self.refreshes = Refreshes(vault, self.answers, self.counters, self.flights)
        self.answers.cors.origins = settings.cors_origins
        self.api_route = ApiRoute(settings, vault, self.answers, self.counters, self.discovered)
        self.token_route = TokenRoute(settings, vault, self.answers, self.counters, self.refreshes, self.jwks)
        self.revoke_route = RevokeRoute(vault, self.answers, self.counters, self.refreshes)
        self.introspect_route = IntrospectRoute(vault, self.answers, self.counters)
        # The endpoints of the authorization server whose requests carry handles in their bodies.
        self.endpoints: dict[str, TokenRoute | RevokeRoute | IntrospectRoute] = {
            "token": self.token_route, "revoke": self.revoke_route, "introspect": self.introspect_route,
        }  # fmt: skip

    def _misconfigured(self, problem: str) -> None:
        self.misconfigured = problem
        logger.error(problem)

    def running(self) -> None:
        for problem in options.unknown_names(ctx.options):
            self._misconfigured(problem)
        self._purger = asyncio.get_running_loop().create_task(self._purge_periodically())

    async def _purge_periodically(self) -> None:
        """Expired records are refused on sight; this drops them too, so a store does not grow without end.
        (diskcache only culls a few per write; Redis expires keys itself and purges nothing here.)"""
        while True:
            await asyncio.sleep(PURGE_INTERVAL_SECONDS)
            if self.vault:
                try:
                    purged = await self.vault.purge()
                except StoreUnavailable as e:
                    logger.warning("periodic purge failed: %s", e)
                else:
                    if purged:
                        logger.info("purged %d expired record(s)", purged)

    def done(self) -> None:
        if self._purger:
            self._purger.cancel()
        if self.vault:
            self.vault.close()
            self.vault = None

    # -----------------------------------------------------------------------------------------------------
    # Hooks

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if self.misconfigured or self.settings is None:
            flow.response = to_response(policy.Refusal(503, "temporarily_unavailable", "proxy misconfigured"))
            self.answers.cors.allow(flow, flow.response)
            return None
        classified = routing.classify(flow, self.settings)
        if classified.route is None:
            return None
        st = self.flows[flow] = FlowState(
            classified.route, fallback=classified.fallback,
            authorization_server=self.authorization_servers.serve(flow),
        )  # fmt: skip
        st.publish(flow.metadata)
        if st.route == "api":
            # Re-joining needs only the headers; done here so that streamed request bodies work too.
            return self.answers.guard(flow, st, self.api_route.request(flow, st), policy.store_unavailable())
        # Token and revocation bodies are read and rewritten: they must be buffered, never streamed, and
        # answered uncompressed, so that a response is judged without inflating what a server compressed.
        flow.request.stream = False
        flow.request.headers["accept-encoding"] = "identity"
        return None

    async def request(self, flow: http.HTTPFlow) -> None:
        st = self.flows.get(flow)
        if st is None or st.answered or flow.response or not flow.live or st.route == "api":
            return
        await self.answers.guard(flow, st, self._endpoint_request(flow, st), policy.store_unavailable())
        if flow.response:
            self.refreshes.settle(flow, st)  # answered here: clients waiting on this refresh get the same

    async def _endpoint_request(self, flow: http.HTTPFlow, st: FlowState) -> None:
        """A request the filters took for the token or revocation endpoint's, once its body is known."""
        body = request_body(flow.request)
        if routing.is_endpoint_request(st.route, body, flow.request.headers.get("authorization", "")):
            return await self.endpoints[st.route].request(flow, st)
        if st.fallback == "api":
            st.route = "api"
            return await self.api_route.request(flow, st)
        del self.flows[flow]  # no route of ours after all
        flow.metadata.pop(META, None)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self.answers.cors.learn(flow)  # what the upstream lets browser origins read, for our own answers
        st = self.flows.get(flow)
        judged = st and (st.route != "api" or st.authorization_server)
        if judged and flow.response and flow.response.stream:
            # mitmproxy streams what exceeds stream_large_bodies (kept at or above splittoken_max_body by
            # configure), and a streamed token response would reach the client before it is judged: too
            # large to parse anyway, it is cut off instead.
            logger.error("token response over stream_large_bodies on %s: closed", logged_path(flow))
            flow.kill()
        elif st and st.route == "api":
            self.api_route.responseheaders(flow, st)

    async def response(self, flow: http.HTTPFlow) -> None:
        st = self.flows.get(flow)
        if st is None or st.answered or flow.response is None:
            return
        if st.route == "token":
            try:
                work = self.token_route.response(flow, st)
                await self.answers.guard(flow, st, work, policy.bad_gateway("internal error"))
            finally:
                self.refreshes.settle(flow, st)
        elif st.route == "revoke":
            self.revoke_route.response(flow, st)
        elif st.route == "introspect":
            self.introspect_route.response(flow, st)
        else:
            self.api_route.response(flow, st)
            if st.authorization_server:
                # A second line behind the filters: whatever the authorization server answers is judged as a
                # token response would be, so a path spelling no filter foresaw cannot carry a token out.
                work = self.token_route.response(flow, st, strict=False)
                await self.answers.guard(flow, st, work, policy.bad_gateway("internal error"))
        if st.event == "split":
            self.authorization_servers.learn(routing.endpoint(flow))

    def error(self, flow: http.HTTPFlow) -> None:
        if st := self.flows.get(flow):
            self.refreshes.settle(
                flow, st, to_response(policy.bad_gateway("authorization server unreachable"))
            )

    # -----------------------------------------------------------------------------------------------------
    # Commands: rare and administrative, so they call the store directly, each call bounded by its timeout.

    @command.command("splittoken.stats")
    def stats(self) -> str:
        """Records in the store, and splits, joins and refusals since start."""
        assert self.vault
        try:
            store_part = describe(self.vault.stats_now())
        except StoreUnavailable as e:
            store_part = f"store unavailable ({e})"
        names = ("splits", "joins", "refreshes", "revocations", "refusals")
        counts = " ".join(f"{name}={self.counters[name]}" for name in names)
        return f"{store_part} {counts}"

    @command.command("splittoken.revoke")
    def revoke(self, handle: str) -> str:
        """Forget a handle (access or refresh): it is refused from now on."""
        assert self.vault
        if self.vault.forget_now(handle.strip()):
            self.counters["revocations"] += 1
            return f"revoked {redact(handle)}"
        return f"no such handle {redact(handle)}"

    @command.command("splittoken.purge")
    def purge(self) -> int:
        """Drop expired records now; returns how many were dropped."""
        assert self.vault
        return self.vault.purge_now()
