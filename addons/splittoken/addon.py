"""The mitmproxy shell of the Split Token Flow: options, hooks and commands.

Token endpoint responses are split (the client gets the JWS signature as a handle, the proxy keeps the
rest); API requests carrying a handle are re-joined; refresh and revocation requests carrying handles get
the real tokens on their way to the authorization server. Everything that can fail fails closed: the
client gets an error answer, never a token.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

import jwt
from mitmproxy import command, ctx, exceptions, flowfilter, http
from mitmproxy.proxy.mode_specs import ReverseMode

from . import jws, policy
from .policy import Refusal, TokenBody
from .seal import Record, store_key
from .store import Store, StoreUnavailable, open_store
from .vault import Vault, describe, new_refresh_handle

logger = logging.getLogger("splittoken")

Route = Literal["token", "revoke", "api"]
T = TypeVar("T")

# The path, not the query, must end in /token (…?next=/token is no token endpoint). ~u matches the whole URL.
DEFAULT_TOKEN_FILTER = '~m POST & ~u "^[^?]*/token($|[?])"'
DEFAULT_REVOKE_FILTER = '~m POST & ~u "^[^?]*/revoke($|[?])"'
# Discovery (RFC 8414, OIDC) and key sets: Keycloak and Google .../certs, Okta and Entra .../keys, Auth0
# /.well-known/jwks.json.
DEFAULT_PUBLIC_FILTER = (
    '~m GET & (~u "^[^?]*/[.]well-known/" | ~u "^[^?]*/(certs|keys|jwks|jwks[.]json)($|[?])")'
)
# How long a client waiting on another client's refresh of the same handle waits before giving up.
REFRESH_WAIT_SECONDS = 60.0
META = "splittoken"
PURGE_INTERVAL_SECONDS = 300
# Concurrent calls to a networked store (Redis) in flight at once; more wait for a thread.
STORE_THREADS = 32


def redact(secret: str) -> str:
    """The only form in which a handle or token may appear in logs and annotations."""
    return f"{secret[:6]}…"


class SplitToken:
    def __init__(self) -> None:
        self.token_filter: flowfilter.TFilter | None = None
        self.revoke_filter: flowfilter.TFilter | None = None
        self.api_filter: flowfilter.TFilter | None = None  # None: every reverse-proxy request
        self.public_filter: flowfilter.TFilter | None = None
        self.vault: Vault | None = None
        self.algorithms: frozenset[str] = frozenset(jws.DEFAULT_ALGORITHMS)
        self.jwks: jwt.PyJWKClient | None = None
        self.counters: Counter[str] = Counter()
        self.log_joins = True
        # Refreshes under way, by refresh handle: concurrent refreshes of one handle share one upstream call.
        self._refreshes: dict[str, asyncio.Future[http.Response]] = {}
        self._purger: asyncio.Task[None] | None = None
        self._store_threads = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="splittoken-store")

    # -----------------------------------------------------------------------------------------------------
    # Options

    def load(self, loader: Any) -> None:
        loader.add_option(
            "splittoken_token_filter", str, DEFAULT_TOKEN_FILTER,
            "Filter expression for token endpoint calls, whose JWT access tokens are split into handles.",
        )
        loader.add_option(
            "splittoken_api_filter", str, "",
            """
            Filter expression for API requests whose handle is re-joined into the JWT. Empty: every request
            arriving in reverse-proxy mode, and none in other modes. Anchor host patterns: ~d is a regex
            search, so '~d api.example.com' also matches 'api.example.com.evil.net'; write
            '~d ^api\\.example\\.com$'.
            """,
        )
        loader.add_option(
            "splittoken_revoke_filter", str, DEFAULT_REVOKE_FILTER,
            "Filter expression for RFC 7009 token revocation calls.",
        )
        loader.add_option(
            "splittoken_public_filter", str, DEFAULT_PUBLIC_FILTER,
            """
            Filter expression for public requests on API routes: when they carry no Authorization, they pass
            instead of being answered 401. Default: OAuth/OIDC discovery documents and key sets, which
            clients fetch without credentials. A request that does carry a handle is re-joined as usual.
            """,
        )
        loader.add_option(
            "splittoken_store", str, "",
            "Where handles live: a directory (diskcache; default: splittoken-store under confdir) "
            "or redis://[:password@]host:port/db (also rediss://).",
        )
        loader.add_option(
            "splittoken_store_timeout_ms", int, 1000,
            "How long a store call may take before the proxy answers 503 (Redis socket timeout, "
            "diskcache busy timeout).",
        )
        loader.add_option(
            "splittoken_max_ttl", int, 86400,
            "Longest life of an access handle, in seconds, whatever the token's exp says.",
        )
        loader.add_option(
            "splittoken_refresh_max_ttl", int, 30 * 86400,
            "Longest life of a refresh handle, in seconds; used when the response has no refresh_expires_in.",
        )
        loader.add_option(
            "splittoken_refresh_grace", int, 10,
            "Seconds a refresh handle just replaced by rotation still answers, with the same new handles.",
        )
        loader.add_option(
            "splittoken_leeway", int, 0,
            "Clock-skew leeway in seconds when judging whether a token or handle has expired.",
        )
        loader.add_option(
            "splittoken_algorithms", Sequence[str], list(jws.DEFAULT_ALGORITHMS),
            "JWS algorithms a token may be signed with; others are refused (alg none always is).",
        )
        loader.add_option(
            "splittoken_jwks_url", str, "",
            "If set, verify each token's signature against this JWKS before storing it.",
        )
        loader.add_option(
            "splittoken_redact_api_responses", bool, False,
            "Replace the re-joined JWT with its handle wherever an API's response echoes it back (debug "
            "endpoints, error pages). Off by default: the demo's echo API shows what the API received.",
        )
        loader.add_option(
            "splittoken_allow_client_jwt", bool, False,
            "Let clients present a full JWT on API routes (forwarded unchanged); for migrations only.",
        )
        loader.add_option(
            "splittoken_log_joins", bool, True,
            "Log one line per re-joined API request. Each log line costs mitmproxy tens of microseconds "
            "(it is dispatched to every addon): turn off at high request rates; flow comments remain.",
        )
        loader.add_option(
            "splittoken_max_body", int, 1024 * 1024,
            "Largest token endpoint response, in bytes, that is parsed; larger ones are refused (502).",
        )  # fmt: skip

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if "splittoken_token_filter" in updated:
            self.token_filter = _parse_filter("splittoken_token_filter", opts.splittoken_token_filter)
        if "splittoken_revoke_filter" in updated:
            self.revoke_filter = _parse_filter("splittoken_revoke_filter", opts.splittoken_revoke_filter)
        if "splittoken_public_filter" in updated:
            self.public_filter = _parse_filter("splittoken_public_filter", opts.splittoken_public_filter)
        if "splittoken_api_filter" in updated:
            spec = opts.splittoken_api_filter
            self.api_filter = _parse_filter("splittoken_api_filter", spec)
            if unanchored_domain(spec):
                logger.warning(
                    "splittoken_api_filter %r has an unanchored ~d: it also matches look-alike hosts "
                    "such as api.example.com.evil.net; anchor it with ^…$",
                    spec,
                )
        for name in (
            "splittoken_max_ttl", "splittoken_refresh_max_ttl", "splittoken_store_timeout_ms",
            "splittoken_max_body",
        ):  # fmt: skip
            if name in updated and getattr(opts, name) <= 0:
                raise exceptions.OptionsError(f"{name} must be a positive number, not {getattr(opts, name)}")
        for name in ("splittoken_leeway", "splittoken_refresh_grace"):
            if name in updated and getattr(opts, name) < 0:
                raise exceptions.OptionsError(f"{name} must not be negative, not {getattr(opts, name)}")
        if "splittoken_algorithms" in updated:
            known = set(jwt.algorithms.get_default_algorithms()) - {"none"}
            unknown = [a for a in opts.splittoken_algorithms if a not in known]
            if unknown or not opts.splittoken_algorithms:
                raise exceptions.OptionsError(
                    f"splittoken_algorithms: not JWS signature algorithms: {unknown or 'empty list'}; "
                    f"choose from {', '.join(sorted(known))}"
                )
            self.algorithms = frozenset(opts.splittoken_algorithms)
        if "splittoken_log_joins" in updated:
            self.log_joins = opts.splittoken_log_joins
        if "splittoken_jwks_url" in updated:
            url = opts.splittoken_jwks_url
            if url and not url.startswith(("https://", "http://")):
                raise exceptions.OptionsError(f"splittoken_jwks_url must be an http(s) URL, not {url!r}")
            self.jwks = jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=5) if url else None
        if {"splittoken_store", "splittoken_store_timeout_ms", "confdir"} & updated:
            self._open_vault()
        elif "splittoken_leeway" in updated and self.vault:
            self.vault.leeway = opts.splittoken_leeway

    def _open_vault(self) -> None:
        opts = ctx.options
        spec = opts.splittoken_store or os.path.join(os.path.expanduser(opts.confdir), "splittoken-store")
        try:
            store: Store = open_store(spec, timeout=opts.splittoken_store_timeout_ms / 1000)
        except (StoreUnavailable, ValueError) as e:
            raise exceptions.OptionsError(f"splittoken_store: {e}") from None
        if self.vault:
            self.vault.store.close()
        self.vault = Vault(store, clock=time.time, leeway=opts.splittoken_leeway)
        logger.info("splittoken: handles in %r", store)

    def running(self) -> None:
        self._purger = asyncio.get_running_loop().create_task(self._purge_periodically())

    async def _purge_periodically(self) -> None:
        """Expired records are refused on sight; this drops them too, so a store does not grow without end.
        (diskcache only culls a few per write; Redis expires keys itself and purges nothing here.)"""
        while True:
            await asyncio.sleep(PURGE_INTERVAL_SECONDS)
            if self.vault:
                try:
                    purged = await asyncio.to_thread(self.vault.store.purge)
                except StoreUnavailable as e:
                    logger.warning("periodic purge failed: %s", e)
                else:
                    if purged:
                        logger.info("purged %d expired record(s)", purged)

    def done(self) -> None:
        if self._purger:
            self._purger.cancel()
        self._store_threads.shutdown(wait=False, cancel_futures=True)
        if self.vault:
            self.vault.store.close()
            self.vault = None

    # -----------------------------------------------------------------------------------------------------
    # Hooks

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        route = self._route(flow)
        if route is None:
            return None
        flow.metadata[META] = {"route": route}
        if route == "api":
            # Re-joining needs only the headers; done here so that streamed request bodies work too.
            return self._guarded(flow, self._api_request(flow), policy.store_unavailable())
        # Token and revocation bodies are read and rewritten: they must be buffered, never streamed, and
        # answered uncompressed, so that a response is judged without inflating what a server compressed.
        flow.request.stream = False
        flow.request.headers["accept-encoding"] = "identity"
        return None

    async def request(self, flow: http.HTTPFlow) -> None:
        route = flow.metadata.get(META, {}).get("route")
        if flow.response or not flow.live or route not in ("token", "revoke"):
            return
        handler = self._token_request if route == "token" else self._revoke_request
        await self._guarded(flow, handler(flow), policy.store_unavailable())
        if flow.response:
            self._settle_refresh(flow)  # answered here: clients waiting on this refresh get the same

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # A streamed token response would reach the client before it could be split.
        if flow.response and flow.metadata.get(META, {}).get("route") in ("token", "revoke"):
            flow.response.stream = False

    async def response(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get(META)
        if not meta or meta.get("answered") or flow.response is None:
            return
        if meta["route"] == "token":
            try:
                await self._guarded(flow, self._token_response(flow), policy.bad_gateway("internal error"))
            finally:
                self._settle_refresh(flow)
        elif meta["route"] == "revoke":
            self._revoke_response(flow)
        elif meta.get("event") == "joined" and ctx.options.splittoken_redact_api_responses:
            _redact_echoed_token(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        if META in flow.metadata:
            error = policy.bad_gateway("authorization server unreachable")
            self._settle_refresh(flow, _response(error))

    # -----------------------------------------------------------------------------------------------------
    # Routing and answers

    def _route(self, flow: http.HTTPFlow) -> Route | None:
        if self.revoke_filter and self.revoke_filter(flow):
            return "revoke"
        if self.token_filter and self.token_filter(flow):
            return "token"
        if self.api_filter is not None:
            return "api" if self.api_filter(flow) else None
        return "api" if isinstance(flow.client_conn.proxy_mode, ReverseMode) else None

    def _answer(self, flow: http.HTTPFlow, answer: http.Response, note: str, refused: bool = True) -> None:
        """Answer the client from the proxy: the request goes no further."""
        flow.request.stream = False
        flow.response = answer
        meta = flow.metadata.setdefault(META, {})
        meta["answered"] = True
        if refused:
            self.counters["refusals"] += 1
            meta["refused"] = note
        self._annotate(flow, note, refused)

    def _refuse(self, flow: http.HTTPFlow, refusal: Refusal) -> None:
        self._answer(flow, _response(refusal), f"refused: {refusal.description}")
        logger.info("refused %s %s: %s", flow.request.method, _logged_path(flow), refusal.description)

    def _annotate(self, flow: http.HTTPFlow, note: str, refused: bool = False) -> None:
        flow.comment = f"split-token: {note}"
        if refused:
            flow.marked = ":no_entry_sign:"

    async def _guarded(self, flow: http.HTTPFlow, work: Awaitable[None], on_error: Refusal) -> None:
        """Run a hook's work so that no failure lets a token through: store outages answer 503, and any
        other exception answers ``on_error`` instead of mitmproxy's default of forwarding the flow as is."""
        try:
            await work
        except StoreUnavailable as e:
            logger.error("token store unavailable: %s", e)
            self._refuse(flow, policy.store_unavailable())
        except Exception as e:
            # The exception's text could hold a token: log its type only.
            logger.error("split-token failed on %s: %s", _logged_path(flow), type(e).__name__)
            self._refuse(flow, on_error)

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """Call the store, off the event loop when it waits on a network. Store calls get threads of their
        own, so that a slow store cannot starve anything else that runs in the default executor."""
        assert self.vault
        if self.vault.store.blocking:
            return await asyncio.get_running_loop().run_in_executor(self._store_threads, fn, *args)
        return fn(*args)

    # -----------------------------------------------------------------------------------------------------
    # API route: handle in, JWT out

    async def _api_request(self, flow: http.HTTPFlow) -> None:
        assert self.vault
        if "authorization" not in flow.request.headers and (
            _is_cors_preflight(flow) or (self.public_filter and self.public_filter(flow))
        ):
            # Nothing to join, and nothing a client must be stopped from sending: browsers never send
            # credentials on a preflight, and discovery documents and key sets are public by design.
            return None
        if not isinstance(flow.client_conn.proxy_mode, ReverseMode) and not _destination_is_named(flow):
            # ~d matches the Host header as well as the destination: a request to evil.net that says
            # "Host: api.example.com" would match an api filter naming api.example.com.
            return self._refuse(flow, policy.invalid_request("Host header does not name the destination"))
        if flow.request.method == "TRACE":
            return self._refuse(flow, policy.invalid_request("TRACE would echo the token back"))
        presented = policy.read_authorization(flow.request.headers.get_all("authorization"))
        if isinstance(presented, Refusal):
            return self._refuse(flow, presented)
        if presented.is_jwt:
            if ctx.options.splittoken_allow_client_jwt:
                self._annotate(flow, "client presented a full JWT (allowed by splittoken_allow_client_jwt)")
                return None
            return self._refuse(flow, policy.invalid_token("present the handle, not a JWT"))
        handle = presented.credential
        record = await self._io(self.vault.find, handle)
        if record is None or record.kind != "access":
            return self._refuse(flow, policy.invalid_token("unknown, expired or revoked handle"))
        flow.request.headers["authorization"] = f"Bearer {jws.join(record.secret, handle)}"
        self.counters["joins"] += 1
        flow.metadata[META].update(event="joined", handle=redact(handle), subject=record.subject)
        self._annotate(flow, f"re-joined handle {redact(handle)} for sub={record.subject or '?'}")
        if self.log_joins:
            logger.info("joined handle %s", redact(handle))
        return None

    # -----------------------------------------------------------------------------------------------------
    # Token endpoint: refresh grants carry a refresh handle out; responses are split on the way back

    async def _token_request(self, flow: http.HTTPFlow) -> None:
        assert self.vault
        try:
            body = TokenBody.parse(flow.request.headers.get("content-type", ""), flow.request.get_content())
        except (policy.Unparseable, ValueError):
            return  # nothing of ours in it; the authorization server will judge it
        if body.fields.get("grant_type") != "refresh_token" or "refresh_token" not in body.fields:
            return
        handle = policy.read_handle(body.fields["refresh_token"])
        if handle is None:
            return self._refuse(flow, policy.invalid_grant("unknown refresh token"))
        if running := self._refreshes.get(handle):
            # Someone is refreshing this very handle: wait for their answer instead of racing them.
            return await self._share_refresh(flow, running)
        # Claimed before the first await, so that a second refresh arriving meanwhile waits for this one.
        self._refreshes[handle] = asyncio.get_running_loop().create_future()
        flow.metadata[META]["refresh_handle"] = handle
        record = await self._io(self.vault.find, handle)
        if record is None or record.kind == "access" or record.issuer != origin(flow):
            return self._refuse(flow, policy.invalid_grant("unknown, expired or revoked refresh token"))
        if record.kind == "rotated":
            replay = _token_answer(record.secret.encode())
            return self._answer(flow, replay, "replayed the answer to a rotation", refused=False)
        body.fields["refresh_token"] = record.secret
        flow.request.content = body.render()
        # A digest, not the token: flow metadata ends up in saved flows.
        flow.metadata[META]["refresh_digest"] = store_key(record.secret)
        self.counters["refreshes"] += 1

    async def _share_refresh(self, flow: http.HTTPFlow, running: asyncio.Future[http.Response]) -> None:
        try:
            answer = await asyncio.wait_for(asyncio.shield(running), REFRESH_WAIT_SECONDS)
        except TimeoutError:
            return self._refuse(flow, Refusal(504, "temporarily_unavailable", "refresh still under way"))
        self._answer(flow, answer.copy(), "shared a concurrent refresh", refused=answer.status_code >= 400)

    def _settle_refresh(self, flow: http.HTTPFlow, answer: http.Response | None = None) -> None:
        handle = flow.metadata.get(META, {}).pop("refresh_handle", None)
        running = self._refreshes.pop(handle, None) if handle else None
        if running and not running.done():
            running.set_result(answer or flow.response or _response(policy.bad_gateway("no response")))

    async def _token_response(self, flow: http.HTTPFlow) -> None:
        assert self.vault and flow.response
        response, meta = flow.response, flow.metadata[META]
        old_handle = meta.get("refresh_handle")
        if any(True for _, value in response.headers.items(multi=True) for _ in jws.find_jws(value)):
            return self._refuse(flow, policy.bad_gateway("a JWS in a response header"))
        try:
            raw = _decoded(response, ctx.options.splittoken_max_body)
        except policy.TooLarge:
            return self._refuse(flow, policy.bad_gateway("response too large"))
        except policy.Unparseable as e:
            return self._refuse(flow, policy.bad_gateway(f"cannot decode the response: {e}"))
        if not 200 <= response.status_code < 300:
            # The provider's errors pass unchanged, unless they carry a token out.
            if policy.holds_jws(raw):
                return self._refuse(flow, policy.bad_gateway("an error response holding a JWS"))
            if old_handle and response.status_code == 400 and _error_code(response) == "invalid_grant":
                await self._refresh_refused(flow, old_handle)
            return
        try:
            body = TokenBody.parse(response.headers.get("content-type", ""), raw)
        except policy.Unparseable as e:
            if policy.holds_jws(raw):
                return self._refuse(flow, policy.bad_gateway(f"unparseable response holding a JWS ({e})"))
            return

        now = time.time()
        issuer = origin(flow)
        records: list[tuple[str, Record]] = []
        access = body.fields.get("access_token")
        if isinstance(access, str) and jws.has_compact_shape(access):
            try:
                split = jws.split(access, algorithms=self.algorithms, now=now, leeway=self.vault.leeway)
                if self.jwks:
                    await asyncio.to_thread(self._verify, access, split)
            except jws.TokenRefused as e:
                return self._refuse(flow, policy.bad_gateway(str(e)))
            expires_at = policy.expiry(
                now, exp=split.claims.get("exp"), expires_in=body.fields.get("expires_in"),
                max_ttl=ctx.options.splittoken_max_ttl,
            )  # fmt: skip
            subject = str(split.claims.get("sub", ""))[:200]
            records.append(
                (split.signature, Record("access", split.signing_input, expires_at, subject, issuer))
            )
            body.fields["access_token"] = split.signature
            meta.update(event="split", header=dict(split.header), claims=dict(split.claims))
        else:
            subject = ""

        rewritten = bool(records)
        new_handle: str | None = None
        refresh = body.fields.get("refresh_token")
        if refresh is not None and refresh != "":
            if not isinstance(refresh, str):
                return self._refuse(flow, policy.bad_gateway("refresh_token is not a string"))
            if old_handle and store_key(refresh) == meta.get("refresh_digest"):
                new_handle = old_handle  # not rotated: the client keeps its handle
            else:
                new_handle = new_refresh_handle()
                expires_at = self._refresh_expiry(body, now)
                records.append((new_handle, Record("refresh", refresh, expires_at, subject, issuer)))
            body.fields["refresh_token"] = new_handle
            rewritten = True

        # The id_token is the client's to read; anything else shaped like a JWS must not reach it, and neither
        # may an "id_token" that is the access token itself.
        id_token = body.fields.get("id_token")
        allowed = id_token if isinstance(id_token, str) and id_token != access else None
        if policy.leaked_jws(body.fields, allowed=allowed):
            return self._refuse(flow, policy.bad_gateway("a JWS outside access_token and id_token"))
        if not rewritten:
            return  # opaque or encrypted tokens only: nothing leaks, the response passes unchanged

        client_body = body.render()
        for handle, record in records:
            await self._io(self.vault.keep, handle, record)
        if old_handle and new_handle not in (None, old_handle):
            grace_end = now + ctx.options.splittoken_refresh_grace
            replay = Record("rotated", client_body.decode(), grace_end, subject, issuer)
            await self._retire_refresh_handle(old_handle, replay)

        response.content = client_body
        for stale in ("ETag", "Content-MD5", "Digest", "Content-Digest"):
            response.headers.pop(stale, None)
        response.headers["Cache-Control"] = "no-store"  # RFC 6749 §5.1
        response.headers["Pragma"] = "no-cache"
        self.counters["splits"] += 1
        handle = str(body.fields.get("access_token", ""))
        meta["handle"] = redact(handle)
        note = f"issued handle {redact(handle)}" + (f", sub={subject}" if subject else "")
        if records and records[0][1].kind == "access":
            note += time.strftime(", expires %H:%M:%SZ", time.gmtime(records[0][1].expires_at))
        self._annotate(flow, note)
        logger.info("split token response: issued %d handle(s), access %s", len(records), redact(handle))

    async def _refresh_refused(self, flow: http.HTTPFlow, handle: str) -> None:
        """The authorization server refused the refresh token behind ``handle``. If another proxy on the same
        store rotated it meanwhile, its answer is there to replay; otherwise the handle is dead: forget it."""
        assert self.vault
        current = await self._io(self.vault.find, handle)
        if current is None:
            return
        if current.kind == "rotated":
            replay = _token_answer(current.secret.encode())
            self._answer(flow, replay, "replayed a rotation made by another proxy", refused=False)
        elif store_key(current.secret) == flow.metadata[META].get("refresh_digest"):
            await self._io(self.vault.forget, handle)

    def _refresh_expiry(self, body: TokenBody, now: float) -> float:
        # Keycloak sends refresh_expires_in 0 for offline tokens, meaning "no fixed expiry": use the cap.
        relative = policy.number(body.fields.get("refresh_expires_in"))
        return policy.expiry(
            now, expires_in=relative or None, max_ttl=ctx.options.splittoken_refresh_max_ttl
        )

    async def _retire_refresh_handle(self, handle: str, replay: Record) -> None:
        """A rotated refresh handle answers late or concurrent refreshes with the same new handles for a
        short grace period, so that two tabs refreshing at once do not log each other out."""
        assert self.vault
        if ctx.options.splittoken_refresh_grace:
            await self._io(self.vault.keep, handle, replay)
        else:
            await self._io(self.vault.forget, handle)

    def _verify(self, token: str, split: jws.SplitJWS) -> None:
        assert self.jwks
        try:
            key = self.jwks.get_signing_key_from_jwt(token)
            jwt.decode(
                token, key.key, algorithms=[str(split.header["alg"])],
                options={"verify_aud": False, "verify_iss": False}, leeway=ctx.options.splittoken_leeway,
            )  # fmt: skip
        except jwt.PyJWKClientError as e:
            raise jws.TokenRefused(f"cannot fetch the JWKS to verify the token: {type(e).__name__}") from None
        except jwt.PyJWTError as e:
            raise jws.TokenRefused(f"signature verification failed: {type(e).__name__}") from None

    # -----------------------------------------------------------------------------------------------------
    # Revocation (RFC 7009)

    async def _revoke_request(self, flow: http.HTTPFlow) -> None:
        assert self.vault
        try:
            body = TokenBody.parse(flow.request.headers.get("content-type", ""), flow.request.get_content())
        except (policy.Unparseable, ValueError):
            return
        handle = policy.read_handle(body.fields.get("token"))
        if handle is None:
            return
        record = await self._io(self.vault.find, handle)
        if record is None or record.issuer != origin(flow):
            # Not ours (an opaque token the authorization server issued, an unknown handle, or one going to
            # another server than the one that issued it): the server decides, and RFC 7009 §2.2 has it
            # answer 200 for tokens it does not know, so nothing leaks.
            return
        await self._io(self.vault.forget, handle)
        self.counters["revocations"] += 1
        flow.metadata[META].update(event="revoked", handle=redact(handle), revoked_kind=record.kind)
        logger.info("revoked %s handle %s", record.kind, redact(handle))
        if record.kind == "rotated":
            note = f"revoked rotated handle {redact(handle)}"
            return self._answer(flow, http.Response.make(200), note, refused=False)
        if record.kind == "access":
            body.fields["token"] = jws.join(record.secret, handle)
        else:
            body.fields["token"] = record.secret
        if "token_type_hint" in body.fields:
            body.fields["token_type_hint"] = f"{record.kind}_token"
        flow.request.content = body.render()
        self._annotate(flow, f"revoked {record.kind} handle {redact(handle)}")

    def _revoke_response(self, flow: http.HTTPFlow) -> None:
        assert flow.response
        meta = flow.metadata[META]
        # Some servers refuse to revoke JWT access tokens (oidc-provider: unsupported_token_type). Only the
        # proxy held this one, and it has forgotten it: for the client the token is revoked.
        if (
            meta.get("revoked_kind") == "access"
            and flow.response.status_code == 400
            and _error_code(flow.response) == "unsupported_token_type"
        ):
            flow.response = http.Response.make(200, b"", {"Cache-Control": "no-store"})
            self._annotate(flow, f"revoked access handle {meta['handle']} (kept only by the proxy)")

    # -----------------------------------------------------------------------------------------------------
    # Commands

    @command.command("splittoken.stats")
    def stats(self) -> str:
        """Records in the store, and splits, joins and refusals since start."""
        assert self.vault
        try:
            store_part = describe(self.vault.store.stats())
        except StoreUnavailable as e:
            store_part = f"store unavailable ({e})"
        names = ("splits", "joins", "refreshes", "revocations", "refusals")
        counts = " ".join(f"{name}={self.counters[name]}" for name in names)
        return f"{store_part} {counts}"

    @command.command("splittoken.revoke")
    def revoke(self, handle: str) -> str:
        """Forget a handle (access or refresh): it is refused from now on."""
        assert self.vault
        if self.vault.forget(handle.strip()):
            self.counters["revocations"] += 1
            return f"revoked {redact(handle)}"
        return f"no such handle {redact(handle)}"

    @command.command("splittoken.purge")
    def purge(self) -> int:
        """Drop expired records now; returns how many were dropped."""
        assert self.vault
        return self.vault.store.purge()


# ---------------------------------------------------------------------------------------------------------


def _redact_echoed_token(flow: http.HTTPFlow) -> None:
    """Put the handle back wherever the API's response repeats the JWT it was given."""
    assert flow.response
    token = flow.request.headers.get("authorization", "").partition(" ")[2]
    handle = token.rpartition(".")[2]
    if not handle:
        return
    headers = flow.response.headers
    for name in {name for name, value in headers.items(multi=True) if token in value}:
        headers.set_all(name, [value.replace(token, handle) for value in headers.get_all(name)])
    try:
        body = flow.response.get_content()
    except ValueError:
        return  # undecodable: the client cannot read it either
    if body and token.encode() in body:
        flow.response.content = body.replace(token.encode(), handle.encode())


def _logged_path(flow: http.HTTPFlow) -> str:
    # Without the query: a client may put a token there (RFC 6750 §2.3 access_token=…).
    return flow.request.path.partition("?")[0][:80]


def _is_cors_preflight(flow: http.HTTPFlow) -> bool:
    return flow.request.method == "OPTIONS" and "access-control-request-method" in flow.request.headers


def _destination_name(flow: http.HTTPFlow) -> str:
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


def _destination_is_named(flow: http.HTTPFlow) -> bool:
    """Whether the Host header names the real destination (a plain-HTTP request to a bare address that
    says another name cannot be checked, and is not joined)."""
    named = flow.request.pretty_host.lower()
    return named in (flow.request.host.lower(), _destination_name(flow))


def origin(flow: http.HTTPFlow) -> str:
    """The token endpoint a handle came from, or a refresh or revocation goes to: scheme, name, port."""
    return f"{flow.request.scheme}://{_destination_name(flow)}:{flow.request.port}"


def _parse_filter(option: str, spec: str) -> flowfilter.TFilter | None:
    """A filter option's expression; None for an empty one."""
    if not spec.strip():
        return None
    try:
        return flowfilter.parse(spec)
    except ValueError as e:
        raise exceptions.OptionsError(f"{option}: invalid filter expression {spec!r}: {e}") from None


def unanchored_domain(spec: str) -> bool:
    """Whether a filter has a ~d pattern that is not anchored at both ends (a look-alike host matches)."""
    words = spec.replace("(", " ").replace(")", " ").split()
    for word, argument in itertools.pairwise(words):
        pattern = argument.strip("\"'")
        if word == "~d" and not (pattern.startswith("^") and pattern.endswith("$")):
            return True
    return False


def _response(refusal: Refusal) -> http.Response:
    headers = {"Content-Type": "application/json", "Cache-Control": "no-store", **dict(refusal.headers)}
    return http.Response.make(refusal.status, refusal.body(), headers)


def _token_answer(body: bytes) -> http.Response:
    ctype = "application/json" if body.lstrip().startswith(b"{") else "application/x-www-form-urlencoded"
    headers = {"Content-Type": ctype, "Cache-Control": "no-store", "Pragma": "no-cache"}
    return http.Response.make(200, body, headers)


def _decoded(response: http.Response, limit: int) -> bytes:
    encoding = response.headers.get("content-encoding", "")
    return policy.decode_body(response.raw_content or b"", encoding, limit)


def _error_code(response: http.Response) -> str | None:
    """The OAuth error code of an error answer (RFC 6749 §5.2), read within a small bound."""
    try:
        raw = _decoded(response, 65536)
        body = TokenBody.parse(response.headers.get("content-type", ""), raw)
    except ValueError:  # Unparseable and TooLarge alike
        return None
    error = body.fields.get("error")
    return error if isinstance(error, str) else None
