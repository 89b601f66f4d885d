"""Revocation (RFC 7009): a handle is forgotten here, and the real token revoked at the authorization server.

Some servers refuse to revoke JWT access tokens (oidc-provider: unsupported_token_type). Only the proxy held
the JWT, and it has forgotten it: for the client the token is revoked, and it is told so.
"""

from __future__ import annotations

import logging
from collections import Counter

from mitmproxy import http

from . import jws, policy
from .answers import Answers, annotate
from .messages import error_code, request_body
from .routing import may_revoke_here
from .state import FlowState, redact
from .vault import Vault

logger = logging.getLogger("splittoken")


class RevokeRoute:
    def __init__(self, vault: Vault, answers: Answers, counters: Counter[str]) -> None:
        self.vault = vault
        self.answers = answers
        self.counters = counters

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
        await self.vault.forget(handle)
        self.counters["revocations"] += 1
        st.event, st.handle, st.revoked_kind = "revoked", redact(handle), record.kind
        logger.info("revoked %s handle %s", record.kind, redact(handle))
        if record.kind == "rotated":
            note = f"revoked rotated handle {redact(handle)}"
            return self.answers.answer(flow, st, http.Response.make(200), note, refused=False)
        body.fields["token"] = jws.join(record.secret, handle) if record.kind == "access" else record.secret
        if "token_type_hint" in body.fields:
            body.fields["token_type_hint"] = f"{record.kind}_token"
        flow.request.content = body.render()
        annotate(flow, f"revoked {record.kind} handle {redact(handle)}")

    def response(self, flow: http.HTTPFlow, st: FlowState) -> None:
        assert flow.response
        if (
            st.revoked_kind == "access"
            and flow.response.status_code == 400
            and error_code(flow.response) == "unsupported_token_type"
        ):
            flow.response = http.Response.make(200, b"", {"Cache-Control": "no-store"})
            annotate(flow, f"revoked access handle {st.handle} (kept only by the proxy)")
