"""Introspection (RFC 7662): an API outside the proxy asks the authorization server about a handle.

The handle in ``token`` is swapped for the real token on its way to the authorization server (only beside
the token endpoint that issued it, as revocation), and the answer comes back with what the server says, but
never with a JWS or the real token in it. A token that is no handle of ours passes unchanged: the server
judges it, and says "inactive" for a handle it never saw (a revoked one included). An active answer about a
DPoP-bound handle names the key it is bound to (RFC 9449 §6.2), which the server cannot know when the proxy
bound it: an API outside the proxy must not take the handle for a bearer token.
"""

from __future__ import annotations

import logging

from mitmproxy import http

from . import leaks, policy
from .answers import Answers, annotate
from .audit import handle_id
from .bodies import TokenBody
from .errors import SplitTokenError, Unparseable
from .events import Events
from .messages import decoded, request_body
from .routing import may_revoke_here
from .state import FlowState, redact
from .vault import Vault

logger = logging.getLogger("splittoken")

# Introspection answers are small JSON objects.
_ANSWER_LIMIT = 1024 * 1024


class IntrospectRoute:
    def __init__(self, vault: Vault, answers: Answers, events: Events) -> None:
        self.vault = vault
        self.answers = answers
        self.events = events

    async def request(self, flow: http.HTTPFlow, st: FlowState) -> None:
        body = request_body(flow.request)
        handle = policy.read_handle(body.fields.get("token")) if body else None
        if body is None or handle is None:
            return
        record = await self.vault.find(handle)
        if record is None or not may_revoke_here(record.issuer, flow):
            return  # not ours: the server decides
        self.events.introspect(flow, handle, record.subject)
        st.event, st.handle, st.subject = "introspected", redact(handle), record.subject
        st.handle_id = handle_id(handle)
        if record.kind == "rotated":
            # Replaced by rotation: no longer a token anyone may use, whatever the server still thinks.
            answer = http.Response.make(200, b'{"active": false}', {"Content-Type": "application/json"})
            note = f"introspected rotated handle {redact(handle)}"
            return self.answers.answer(flow, st, answer, note, refused=False)
        st.jkt = record.jkt
        st.swapped_in = body.fields["token"] = record.real_token(handle)
        st.swapped_for = handle
        if "token_type_hint" in body.fields:
            body.fields["token_type_hint"] = f"{record.kind}_token"
        flow.request.content = body.render()
        annotate(flow, f"introspected {record.kind} handle {redact(handle)}")

    def response(self, flow: http.HTTPFlow, st: FlowState) -> None:
        assert flow.response
        if not st.swapped_in:
            return
        try:
            raw = decoded(flow.response, _ANSWER_LIMIT)
        except SplitTokenError:
            return self.answers.refuse(flow, st, policy.bad_gateway("unreadable introspection answer"))
        headers = [value for _, value in flow.response.headers.items(multi=True)]
        if leaks.holds_jws(raw) or any(leaks.text_holds_jws(value) for value in headers):
            return self.answers.refuse(flow, st, policy.bad_gateway("an introspection answer holding a JWS"))
        # The real refresh token the server may quote goes back as its handle, or the answer is refused.
        self.answers.pass_on(flow, st, raw)
        if st.jkt and not st.answered:
            _show_binding(flow.response, st.jkt)


def _show_binding(response: http.Response, jkt: str) -> None:
    """An active answer says that the token is DPoP-bound to the key ``jkt`` (RFC 9449 §6.2)."""
    try:
        answer = TokenBody.parse(response.headers.get("content-type", ""), response.content or b"")
    except Unparseable:
        return
    if response.status_code != 200 or answer.form or answer.fields.get("active") is not True:
        return
    cnf = answer.fields.get("cnf")
    answer.fields["cnf"] = {**(cnf if isinstance(cnf, dict) else {}), "jkt": jkt}
    answer.fields["token_type"] = "DPoP"
    response.content = answer.render()
