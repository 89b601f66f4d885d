"""Revocation (RFC 7009): a handle is forgotten here, and the real token revoked at the authorization server.

Revoking a refresh handle logs out: whichever handle of a rotation chain it is (the current one, or one still
in its grace period), the whole chain is forgotten and the chain's current refresh token is what the server
revokes. Some servers refuse to revoke JWT access tokens (oidc-provider: unsupported_token_type). Only the
proxy held the JWT, and it has forgotten it: for the client the token is revoked, and it is told so.
"""

from __future__ import annotations

import logging

from mitmproxy import http

from . import policy
from .answers import Answers, annotate
from .audit import handle_id
from .errors import SplitTokenError
from .events import Events
from .messages import decoded, error_code, request_body
from .refresh import Refreshes, refreshing_client
from .routing import may_revoke_here
from .state import FlowState, redact
from .vault import Vault

logger = logging.getLogger("splittoken")

# Revocation answers are empty or small error objects.
_ANSWER_LIMIT = 1024 * 1024


class RevokeRoute:
    def __init__(self, vault: Vault, answers: Answers, events: Events, refreshes: Refreshes) -> None:
        self.vault = vault
        self.answers = answers
        self.events = events
        self.refreshes = refreshes

    async def request(self, flow: http.HTTPFlow, st: FlowState) -> None:
        body = request_body(flow.request)
        handle = policy.read_handle(body.fields.get("token")) if body else None
        if handle is None:
            return
        record = await self.vault.find(handle)
        if record is None or not may_revoke_here(record.issuer, flow):
            # Not ours (an opaque token the authorization server issued, an unknown handle, or one going to
            # another server than the one that issued it): the server decides, and RFC 7009 §2.2 has it
            # answer 200 for tokens it does not know, so nothing leaks.
            return
        if record.kind == "access":
            real: str | None = record.real_token(handle)
            forgotten = False
        else:
            client = refreshing_client(flow, body, record.jkt)
            record = await self.refreshes.after_other_proxies(flow, handle, record, client)
            real, forgotten = await self.refreshes.end(handle, record, now=False)
        st.handle, st.revoked_kind, st.handle_id = redact(handle), record.kind, handle_id(handle)
        st.revocation_pending = not forgotten
        if forgotten:
            self._revoked(flow, st, handle, record.subject)
        if real is None:
            note = f"revoked {record.kind} handle {redact(handle)}, whose chain had ended"
            return self.answers.answer(flow, st, http.Response.make(200), note, refused=False)
        body.fields["token"] = st.swapped_in = real
        st.swapped_for = handle
        if "token_type_hint" in body.fields:
            body.fields["token_type_hint"] = "access_token" if record.kind == "access" else "refresh_token"
        flow.request.content = body.render()
        annotate(flow, f"revoking {record.kind} handle {redact(handle)}")

    def _revoked(self, flow: http.HTTPFlow, st: FlowState, handle: str, subject: str) -> None:
        self.events.revoke(flow, handle, subject)
        st.event, st.revocation_pending = "revoked", False
        logger.info("revoked %s handle %s", st.revoked_kind, redact(handle))

    async def response(self, flow: http.HTTPFlow, st: FlowState) -> None:
        assert flow.response
        if st.swapped_in:
            try:
                raw = decoded(flow.response, _ANSWER_LIMIT)
            except SplitTokenError:
                return self.answers.refuse(flow, st, policy.bad_gateway("unreadable revocation answer"))
            self.answers.pass_on(flow, st, raw)
            if st.answered:
                return
        if (
            st.revoked_kind == "access"
            and flow.response.status_code == 400
            and error_code(flow.response) == "unsupported_token_type"
        ):
            flow.response = http.Response.make(200, b"", {"Cache-Control": "no-store"})
            annotate(flow, f"revoked access handle {st.handle} (kept only by the proxy)")
        if st.revocation_pending and flow.response.status_code == 200:
            await self._forget(flow, st)

    async def _forget(self, flow: http.HTTPFlow, st: FlowState) -> None:
        """The authorization server accepted the revocation (RFC 7009 §2.2: 200), so the client was who it
        had to be: the handle, or the refresh handle's whole chain, is forgotten now."""
        handle = st.swapped_for
        record = await self.vault.find(handle)
        if record is None:
            return
        if record.kind == "access":
            await self.vault.forget(handle)
        else:
            await self.refreshes.end(handle, record)
        self._revoked(flow, st, handle, record.subject)
