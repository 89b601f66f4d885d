"""The API route: a handle comes in, the JWT it was cut from goes upstream.

Done on the request headers alone, so that streamed request bodies work too. Whatever cannot be joined is
answered here with the RFC 6750 error; the API never sees it.
"""

from __future__ import annotations

import logging
from collections import Counter

from mitmproxy import http

from . import jws, policy
from .answers import Answers, annotate
from .options import Settings
from .policy import Refusal
from .routing import destination_is_named, in_reverse_mode, is_cors_preflight
from .state import FlowState, redact
from .vault import Vault

logger = logging.getLogger("splittoken")


class ApiRoute:
    def __init__(self, settings: Settings, vault: Vault, answers: Answers, counters: Counter[str]) -> None:
        self.settings = settings
        self.vault = vault
        self.answers = answers
        self.counters = counters

    async def request(self, flow: http.HTTPFlow, st: FlowState) -> None:
        if "authorization" not in flow.request.headers and (
            is_cors_preflight(flow) or (self.settings.public_filter and self.settings.public_filter(flow))
        ):
            # Nothing to join, and nothing a client must be stopped from sending: browsers never send
            # credentials on a preflight, and discovery documents and key sets are public by design.
            return None
        if refusal := self._precheck(flow):
            return self.answers.refuse(flow, st, refusal)
        presented = policy.read_authorization(flow.request.headers.get_all("authorization"))
        if isinstance(presented, Refusal):
            return self.answers.refuse(flow, st, presented)
        if presented.is_jwt:
            if self.settings.allow_client_jwt:
                annotate(flow, "client presented a full JWT (allowed by splittoken_allow_client_jwt)")
                return None
            return self.answers.refuse(flow, st, policy.invalid_token("present the handle, not a JWT"))
        handle = presented.credential
        record = await self.vault.find(handle)
        if record is None or record.kind != "access":
            return self.answers.refuse(flow, st, policy.invalid_token("unknown, expired or revoked handle"))
        flow.request.headers["authorization"] = f"Bearer {jws.join(record.secret, handle)}"
        self.counters["joins"] += 1
        st.event, st.handle, st.subject = "joined", redact(handle), record.subject
        annotate(flow, f"re-joined handle {redact(handle)} for sub={record.subject or '?'}")
        if self.settings.log_joins:
            logger.info("joined handle %s", redact(handle))
        return None

    def _precheck(self, flow: http.HTTPFlow) -> Refusal | None:
        if not in_reverse_mode(flow) and not destination_is_named(flow):
            # ~d matches the Host header as well as the destination: a request to evil.net that says
            # "Host: api.example.com" would match an api filter naming api.example.com.
            return policy.invalid_request("Host header does not name the destination")
        if flow.request.method == "TRACE":
            return policy.invalid_request("TRACE would echo the token back")
        return None

    def response(self, flow: http.HTTPFlow, st: FlowState) -> None:
        if st.event == "joined" and self.settings.redact_api_responses:
            redact_echoed_token(flow)


def redact_echoed_token(flow: http.HTTPFlow) -> None:
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
