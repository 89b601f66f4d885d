"""The token endpoint: refresh grants carry a refresh handle out; token responses are split on the way back.

A JWS access token is split: the proxy keeps ``header.payload``, the client gets the signature as its
handle. A refresh token, whatever its form, becomes a random refresh handle. The id_token is the client's to
read. Anything else that could carry a token out is refused (502), and a response the proxy cannot store
never reaches the client (503).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import jwt
from mitmproxy import http

from . import jws, leaks, policy
from .answers import Answers, annotate
from .audit import handle_id
from .bodies import TokenBody
from .errors import TokenRefused, TooLarge, Unparseable
from .events import Events
from .messages import decoded, error_code, request_body
from .possession import Possession
from .refresh import Refreshes, refresh_expiry
from .routing import endpoint
from .seal import Record, store_key
from .settings import Settings
from .state import FlowState, redact
from .vault import Vault, new_refresh_handle

logger = logging.getLogger("splittoken")

REFRESH_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:refresh_token"
# Validators a rewritten body no longer matches.
_STALE_HEADERS = ("ETag", "Content-MD5", "Digest", "Content-Digest")


@dataclass
class Issue:
    """What one token response gives the client in place of its tokens."""

    records: list[tuple[str, Record]] = field(default_factory=list)
    subject: str = ""
    new_refresh_handle: str | None = None
    refresh_handle: str | None = None  # the one the client gets: the new one, or the one it refreshed with
    rewritten: bool = False


class TokenRoute:
    def __init__(
        self, settings: Settings, vault: Vault, answers: Answers, events: Events,
        refreshes: Refreshes, jwks: jwt.PyJWKClient | None,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.vault = vault
        self.answers = answers
        self.events = events
        self.refreshes = refreshes
        self.jwks = jwks
        self.possession = Possession(settings, vault)

    async def request(self, flow: http.HTTPFlow, st: FlowState) -> None:
        if refusal := await self.possession.token_request(flow, st):
            return self.answers.refuse(flow, st, refusal)
        body = request_body(flow.request)
        if body and body.fields.get("grant_type") == "refresh_token" and "refresh_token" in body.fields:
            await self.refreshes.begin(flow, st, body)

    async def response(self, flow: http.HTTPFlow, st: FlowState, strict: bool = True) -> None:
        """``strict``: a token endpoint's answer must be readable; other answers of the authorization server
        (pages, userinfo) are refused only when they hold a token."""
        assert flow.response
        response = flow.response
        if problem := leaks.header_problem(response.headers.items(multi=True)):
            return self.answers.refuse(flow, st, policy.bad_gateway(problem))
        try:
            raw = decoded(response, self.settings.max_body)
        except TooLarge:
            return self.answers.refuse(flow, st, policy.bad_gateway("response too large"))
        except Unparseable as e:
            return self.answers.refuse(flow, st, policy.bad_gateway(f"cannot decode the response: {e}"))
        if not 200 <= response.status_code < 300:
            return await self._error_response(flow, st, raw)
        ctype = response.headers.get("content-type", "")
        if not strict and _is_page(ctype):
            # A page (a login form, a form_post of an id_token), no token answer: read as a browser reads it.
            if leaks.page_holds_jws(raw):
                return self.answers.refuse(flow, st, policy.bad_gateway("a page holding a JWS"))
            return self.answers.pass_on(flow, st, raw)
        try:
            body = TokenBody.parse(ctype, raw)
        except Unparseable as e:
            if (strict and raw.strip()) or leaks.holds_jws(raw):
                # A client may read more into it than the proxy could (a body cut short, an HTML page).
                return self.answers.refuse(flow, st, policy.bad_gateway(f"unparseable token response ({e})"))
            return self.answers.pass_on(flow, st, raw)
        await self._answer(flow, st, body, raw, strict)

    async def _answer(
        self, flow: http.HTTPFlow, st: FlowState, body: TokenBody, raw: bytes, strict: bool
    ) -> None:
        """A token answer read: its tokens become handles, or it passes, or it is refused."""
        try:
            issue = await self._issue(flow, st, body)
        except TokenRefused as e:
            return self.answers.refuse(flow, st, policy.bad_gateway(str(e)))
        if issue.rewritten:
            await self._hand_out(flow, st, body, issue)
        elif strict and leaks.names_a_refresh_token(raw.decode("utf-8", "replace")):
            # Read as something else than the proxy read it (a byte before the JSON, which some readers skip):
            # its refresh token, opaque, was found by no field check.
            self.answers.refuse(flow, st, policy.bad_gateway("a refresh token outside the answer's fields"))
        else:
            self.answers.pass_on(flow, st, raw)

    async def _error_response(self, flow: http.HTTPFlow, st: FlowState, raw: bytes) -> None:
        """The provider's errors pass unchanged, unless they carry a token out."""
        assert flow.response
        if leaks.holds_jws(raw) or leaks.names_a_refresh_token(raw.decode("utf-8", "replace")):
            return self.answers.refuse(flow, st, policy.bad_gateway("an error response holding a token"))
        self.answers.pass_on(flow, st, raw)
        if st.answered:
            return
        if (
            st.refresh_handle
            and flow.response.status_code == 400
            and error_code(flow.response) == "invalid_grant"
        ):
            await self.refreshes.refused(flow, st)

    async def _issue(self, flow: http.HTTPFlow, st: FlowState, body: TokenBody) -> Issue:
        """Replace the tokens in ``body`` by handles; raises TokenRefused for a body that must not pass."""
        issue = Issue()
        now = self.vault.clock()
        access = body.fields.get("access_token")
        if body.fields.get("issued_token_type") == REFRESH_TOKEN_TYPE:
            # RFC 8693 §2.2.1: a token exchange answer carries whatever it issued in access_token.
            self._hide_refresh(flow, st, body, issue, now, "access_token")
        elif isinstance(access, str) and jws.has_compact_shape(access):
            await self._split_access(flow, st, body, access, issue, now)
        self._hide_refresh(flow, st, body, issue, now, "refresh_token")
        # The id_token is the client's to read; anything else shaped like a JWS must not reach it, and neither
        # may an "id_token" that is the access token itself.
        id_token = body.fields.get("id_token")
        allowed = id_token if isinstance(id_token, str) and not _carries(id_token, access) else None
        if leaks.leaked_jws(body.fields, allowed=allowed):
            raise TokenRefused("a JWS outside access_token and id_token")
        return issue  # not rewritten: opaque or encrypted tokens only, nothing leaks, the response passes

    async def _split_access(
        self, flow: http.HTTPFlow, st: FlowState, body: TokenBody, access: str, issue: Issue, now: float
    ) -> None:
        split = jws.split(access, algorithms=self.settings.algorithms, now=now, leeway=self.vault.leeway)
        if self.jwks:
            await asyncio.to_thread(self._verify, access, split)
        expires_at = policy.expiry(
            now, exp=split.claims.get("exp"), expires_in=body.fields.get("expires_in"),
            max_ttl=self.settings.max_ttl,
        )  # fmt: skip
        issue.subject = str(split.claims.get("sub", ""))[:200]
        if jkt := self.possession.binding(split.claims, st):
            body.fields["token_type"] = "DPoP"  # RFC 9449 §5: the client must present it with proofs
        record = Record("access", split.signing_input, expires_at, issue.subject, endpoint(flow), jkt=jkt)
        issue.records.append((split.signature, record))
        issue.rewritten = True
        body.fields["access_token"] = split.signature
        st.event, st.header, st.claims = "split", dict(split.header), dict(split.claims)

    def _hide_refresh(
        self, flow: http.HTTPFlow, st: FlowState, body: TokenBody, issue: Issue, now: float, name: str
    ) -> None:
        """Replace the refresh token in field ``name`` by a refresh handle, whatever its form."""
        refresh = body.fields.get(name)
        if refresh is None or refresh == "":
            return
        if not isinstance(refresh, str):
            raise TokenRefused(f"{name} is not a string")
        old_handle = st.refresh_handle
        if old_handle and store_key(refresh) == st.refresh_digest:
            handle = old_handle  # not rotated: the client keeps its handle
        else:
            handle = issue.new_refresh_handle = new_refresh_handle()
            expires_at = refresh_expiry(body, now, self.settings.refresh_max_ttl)
            issue.records.append(
                (handle, Record("refresh", refresh, expires_at, issue.subject, endpoint(flow), jkt=st.jkt))
            )
        body.fields[name] = issue.refresh_handle = handle
        issue.rewritten = True

    async def _hand_out(self, flow: http.HTTPFlow, st: FlowState, body: TokenBody, issue: Issue) -> None:
        """Store the records, then give the client its handles; a store failure raises before it gets any."""
        assert flow.response
        if (client_body := self.answers.swapped_out(flow, st, body.render())) is None:
            return
        if st.refresh_handle:
            # A revocation that won meanwhile revokes the answer's refresh token instead of the one it found.
            kept = dict(issue.records)
            withheld = kept[issue.new_refresh_handle].secret if issue.new_refresh_handle else st.swapped_in
            if await self.refreshes.revoked_meanwhile(flow, st, withheld):
                return self.answers.refuse(flow, st, policy.invalid_grant("refresh token revoked"))
        for handle, record in issue.records:
            await self.vault.keep(handle, record)
        if st.refresh_handle and issue.new_refresh_handle:
            grace = self.settings.refresh_grace
            replay = Record(
                "rotated", client_body.decode(), self.vault.clock() + grace, issue.subject, endpoint(flow),
                client=st.client, refresh_token=st.swapped_in, jkt=st.jkt,
            )  # fmt: skip
            await self.refreshes.retire(flow, st, issue.new_refresh_handle, replay, grace)
        response = flow.response
        response.content = client_body
        for stale in _STALE_HEADERS:
            response.headers.pop(stale, None)
        response.headers["Cache-Control"] = "no-store"  # RFC 6749 §5.1
        response.headers["Pragma"] = "no-cache"
        access = next((handle for handle, record in issue.records if record.kind == "access"), None)
        self.events.split(flow, access, issue.refresh_handle, issue.subject, bound=bool(st.jkt))
        if st.swapped_for:  # a refresh grant: swapped_for is the refresh handle it presented
            renewed = issue.refresh_handle or st.swapped_for
            self.events.refresh(flow, st.swapped_for, renewed, access, issue.subject)
        self._note(flow, st, body, issue)

    def _note(self, flow: http.HTTPFlow, st: FlowState, body: TokenBody, issue: Issue) -> None:
        handle = str(body.fields.get("access_token", ""))
        st.handle, st.handle_id = redact(handle), handle_id(handle) if handle else ""
        bound = "DPoP-bound " if st.jkt else ""
        note = f"issued {bound}handle {redact(handle)}" + (f", sub={issue.subject}" if issue.subject else "")
        if issue.records and issue.records[0][1].kind == "access":
            note += time.strftime(", expires %H:%M:%SZ", time.gmtime(issue.records[0][1].expires_at))
        annotate(flow, note)
        logger.info(
            "split token response: issued %d handle(s), access %s", len(issue.records), redact(handle)
        )

    def _verify(self, token: str, split: jws.SplitJWS) -> None:
        assert self.jwks
        try:
            key = self.jwks.get_signing_key_from_jwt(token)
            jwt.decode(
                token, key.key, algorithms=[str(split.header["alg"])],
                options={"verify_aud": False, "verify_iss": False}, leeway=self.settings.leeway,
            )  # fmt: skip
        except jwt.PyJWKClientError as e:
            raise TokenRefused(f"cannot fetch the JWKS to verify the token: {type(e).__name__}") from None
        except jwt.PyJWTError as e:
            raise TokenRefused(f"signature verification failed: {type(e).__name__}") from None


def _is_page(content_type: str) -> bool:
    """A content type browsers render (HTML), which is never a token answer's."""
    return content_type.partition(";")[0].strip().lower() in ("text/html", "application/xhtml+xml")


def _carries(id_token: str, access: object) -> bool:
    """Whether the id_token holds the access token's claims (the token itself, with a character added or
    another signature): then it is no id_token the client may read."""
    if not isinstance(access, str) or not jws.has_compact_shape(access):
        return access == id_token
    return access.split(".")[1] in id_token
