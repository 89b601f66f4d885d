"""The mitmproxy shell of the Split Token Flow: options, hooks and commands.

Each hook is a guard plus one call into the route the flow belongs to (api_route, token_route, revoke_route);
settings are parsed once in ``configure``. Everything that can fail fails closed: the client gets an error
answer, never a token.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import weakref
from collections.abc import Awaitable
from typing import Any

import jwt
from mitmproxy import command, ctx, exceptions, http

from . import options, policy, routing
from .answers import Answers, to_response
from .audit import Reason
from .discovery import Discovered
from .errors import OptionInvalid, ReplicasInvalid, StoreInvalid, StoreUnavailable
from .events import COUNTS, Events
from .logs import RedactedLogs
from .refresh import Flights
from .routes import Routes, jwks_client
from .settings import Settings, parse_settings
from .state import META, FlowState, redact
from .store import open_store
from .vault import Vault, describe

logger = logging.getLogger("splittoken")

PURGE_INTERVAL_SECONDS = 300


class SplitToken:
    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.vault: Vault | None = None
        self.events = Events()  # counted for splittoken.stats, and the metrics and audit trail when on
        self.answers = Answers(self.events)
        self.flights: Flights = {}
        # What the addon knows of each flow in flight; published to flow.metadata without its secrets.
        self.flows: weakref.WeakKeyDictionary[http.HTTPFlow, FlowState] = weakref.WeakKeyDictionary()
        self.authorization_servers = routing.AuthorizationServers()
        self.discovered = Discovered()  # public endpoints named by discovery documents that passed
        # Set when the options the proxy started with are unusable: every flow is refused until fixed.
        self.misconfigured: str | None = None
        self.jwks: jwt.PyJWKClient | None = None
        self._purger: asyncio.Task[None] | None = None
        self.logs = RedactedLogs()  # no token in any log line, mitmproxy's own included

    def load(self, loader: Any) -> None:
        self.logs.install(loader.master)
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
            settings = parse_settings(ctx.options)
            self.events.configure(settings.metrics, settings.audit_log)
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
            and (previous.store, previous.store_timeout, previous.cache_size, previous.min_replicas)
            == (settings.store, settings.store_timeout, settings.cache_size, settings.min_replicas)
        ):
            self.vault.leeway = settings.leeway
            return self.vault
        try:
            store = open_store(
                settings.store, timeout=settings.store_timeout, min_replicas=settings.min_replicas
            )
        except ReplicasInvalid as e:
            raise OptionInvalid("splittoken_min_replicas", str(e)) from None
        except (StoreInvalid, StoreUnavailable) as e:
            raise OptionInvalid("splittoken_store", str(e)) from None
        if self.vault:
            self.vault.close()
        logger.info("splittoken: handles in %r", store)
        return Vault(store, leeway=settings.leeway, cache_size=settings.cache_size)

    def _build_routes(self, settings: Settings, vault: Vault) -> None:
        self.jwks = jwks_client(settings.jwks_url, self.jwks)
        self.answers.cors.origins = settings.cors_origins
        self.events.watch(vault)
        self.routes = Routes(
            settings, vault, self.answers, self.events, self.flights, self.discovered,
            self.authorization_servers, self.jwks,
        )  # fmt: skip

    def _misconfigured(self, problem: str) -> None:
        self.misconfigured = problem
        logger.error(problem)

    def running(self) -> None:
        for problem in options.unknown_names(ctx.options):
            self._misconfigured(problem)
        if self.misconfigured:
            # mitmproxy exits for an error logged at start-up only while it is looking, and it loads `-s`
            # scripts a few event-loop turns after it starts: a script loaded late would leave a proxy up
            # that refuses every flow. Exit either way; the error above names the option.
            sys.exit(1)
        # mitmproxy opens its listeners before the script has loaded: this line says the addon now serves.
        logger.info("splittoken: ready")
        self._purger = asyncio.get_running_loop().create_task(self._purge_periodically())

    async def _purge_periodically(self) -> None:
        while True:
            await asyncio.sleep(PURGE_INTERVAL_SECONDS)
            if self.vault:
                await self.vault.purge_logged()

    def done(self) -> None:
        if self._purger:
            self._purger.cancel()
        if self.vault:
            self.vault.close()
            self.vault = None
        self.events.close()
        self.logs.uninstall()

    # -----------------------------------------------------------------------------------------------------
    # Hooks

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if self.misconfigured or self.settings is None:
            flow.response = to_response(policy.Refusal(503, "temporarily_unavailable", "proxy misconfigured"))
            self.answers.cors.allow(flow, flow.response)
            return None
        if not routing.host_is_an_authority(flow):
            refusal = policy.invalid_request("the Host header is not host[:port]", Reason.DESTINATION)
            flow.response = to_response(refusal)
            return None
        classified = routing.classify(flow, self.settings)
        if classified.route is None:
            return None
        st = self.flows[flow] = FlowState(
            classified.route, fallback=classified.fallback,
            authorization_server=self.authorization_servers.serve(classified.endpoint),
        )  # fmt: skip
        if st.route == "api":
            # Re-joining needs only the headers; done here so that streamed request bodies work too. The
            # guard publishes the state.
            return self.answers.guard(flow, st, self.routes.api.request(flow, st), policy.STORE_UNAVAILABLE)
        st.publish(flow.metadata)
        # Token and revocation bodies are read and rewritten: they must be buffered, never streamed, and
        # answered uncompressed, so that a response is judged without inflating what a server compressed.
        # Any other POST may stream as mitmproxy decides: a token request is never that large.
        if not classified.by_body:
            flow.request.stream = False
        flow.request.headers["accept-encoding"] = "identity"
        return None

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        st = self.flows.get(flow)
        if st is None or st.answered or flow.response or not flow.live or st.route == "api":
            return None  # API calls were joined on their headers; nothing to await
        return self._endpoint_request(flow, st)

    async def _endpoint_request(self, flow: http.HTTPFlow, st: FlowState) -> None:
        if not await self.routes.request(flow, st):
            del self.flows[flow]
            flow.metadata.pop(META, None)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self.answers.cors.learn(flow)  # what the upstream lets browser origins read, for our own answers
        if st := self.flows.get(flow):
            self.routes.responseheaders(flow, st)

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        st = self.flows.get(flow)
        if st is not None and not st.answered and flow.response is not None:
            return self.routes.response(flow, st)
        return None

    def error(self, flow: http.HTTPFlow) -> None:
        if st := self.flows.get(flow):
            self.routes.error(flow, st)

    # -----------------------------------------------------------------------------------------------------
    # Commands: rare and administrative, so they call the store directly, each call bounded by its timeout.

    @command.command("splittoken.stats")
    def stats(self) -> str:
        """Records in the store, and splits, joins, refusals and the other events since start."""
        assert self.vault
        try:
            store_part = describe(self.vault.stats_now())
        except StoreUnavailable as e:
            store_part = f"store unavailable ({e})"
        counts = " ".join(f"{name}={self.events.counts[name]}" for name in COUNTS)
        return f"{store_part} {counts}"

    @command.command("splittoken.revoke")
    def revoke(self, handle: str) -> str:
        """Forget a handle (access or refresh): it is refused from now on."""
        assert self.vault
        if self.vault.forget_now(handle.strip()):
            self.events.revoke(None, handle.strip(), "")
            return f"revoked {redact(handle)}"
        return f"no such handle {redact(handle)}"

    @command.command("splittoken.purge")
    def purge(self) -> int:
        """Drop expired records now; returns how many were dropped."""
        assert self.vault
        return self.vault.purge_now()
