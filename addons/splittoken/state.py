"""What the addon knows about one flow: one typed record, and the part of it that may be shown.

Flow metadata is saved with the flow and shown by mitmweb, so what is published there (``published``) holds
no credential: handles appear redacted, refresh tokens as digests. The secrets a flow needs between its
hooks (the refresh handle it presented, the real token the proxy put into it) stay in this process only.
Reading the published form needs nothing of the shell, so the content view can do it from a saved flow.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .redaction import Echo

# The key under flow.metadata.
META = "splittoken"

Route = Literal["token", "revoke", "introspect", "api"]
Event = Literal["split", "joined", "revoked", "introspected"]


def redact(secret: str) -> str:
    """The only form in which a handle or token may appear in logs, annotations and metadata."""
    return f"{secret[:6]}…"


def _secret() -> Any:
    return field(default="", repr=False, metadata={"secret": True})


@dataclass
class FlowState:
    route: Route
    fallback: Route | None = None  # what a token or revocation candidate is when its body says otherwise
    authorization_server: bool = False  # goes to where a token endpoint answered: answers are judged as such
    public: bool = False  # let through without credentials by the public filter: the authorization server's
    event: Event | None = None
    handle: str = ""  # redacted
    handle_id: str = ""  # audit.handle_id of the handle: what the audit trail calls it
    subject: str = ""
    header: dict[str, Any] = field(default_factory=dict)  # of the JWT kept back, for the content view
    claims: dict[str, Any] = field(default_factory=dict)
    refused: str = ""  # why the proxy answered itself with an error
    answered: bool = False  # the proxy answered: later hooks leave the flow alone
    revoked_kind: str = ""
    revocation_pending: bool = False  # the handle is forgotten once the authorization server accepts it
    refresh_digest: str = ""  # store key of the real refresh token sent upstream
    # DPoP (RFC 9449): the thumbprint of the key of the request's valid proof, or of the key the handles
    # issued are bound to; and what the proof check found ("" when there was no proof to check).
    jkt: str = ""
    dpop: str = ""
    # Secrets: never published.
    refresh_handle: str = _secret()  # the refresh handle this flow presented, while its refresh is in flight
    swapped_in: str = _secret()  # the real token the proxy put into this request: it must not come back
    swapped_for: str = _secret()  # the handle swapped_in stands for: what its answer may show instead
    client: str = _secret()  # a refresh's client authentication (policy.client_authentication)
    # How swapped_in would show in the answer: worked out once, for its headers and its body.
    echo: Echo | None = field(default=None, repr=False, metadata={"secret": True})

    def publish(self, metadata: dict[str, Any]) -> None:
        metadata[META] = {name: getattr(self, name) for name in _PUBLISHED}

    @classmethod
    def published(cls, metadata: dict[str, Any]) -> FlowState | None:
        """The state as published in a flow's metadata (a live flow or a saved one), secrets absent."""
        record = metadata.get(META)
        if not isinstance(record, dict) or record.get("route") not in typing.get_args(Route):
            return None
        return cls(**{k: v for k, v in record.items() if k in _PUBLISHED})


# Worked out once: publish() runs on every join.
_PUBLISHED = tuple(f.name for f in dataclasses.fields(FlowState) if not f.metadata.get("secret"))
