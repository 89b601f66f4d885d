"""The "Split Token" content view: what the proxy keeps from clients, and what it forwards upstream.

For a token response the addon split, it shows the JWT header and claims the proxy kept back beside the
handles the client got; for an API request it re-joined, the JWT that went upstream in Authorization. Any
other message holding a JWT is decoded too. Signatures are never shown: the access handle *is* the JWT's
signature, so handles appear redacted, as in the addon's logs and flow comments.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from mitmproxy import contentviews, http
from mitmproxy.addonmanager import Loader
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from . import jws
from .bodies import TokenBody
from .errors import Unparseable
from .state import FlowState, redact

# Registered claims holding NumericDate values (RFC 7519 §4.1, OIDC Core §2).
TIME_CLAIMS = ("exp", "nbf", "iat", "auth_time")
# Above JSON and url-encoded (1), so that auto-selection picks this view, as mitmproxy's docs advise.
PRIORITY = 2.0


def describe_time(claim: str, value: object, now: float) -> str | None:
    """A NumericDate as a UTC time and how far it is from ``now``: "2025-01-01 12:00:00 UTC, in 4m 12s"."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        when = datetime.fromtimestamp(value, UTC)
    except (OverflowError, ValueError, OSError):
        return "not a valid time"
    delta = value - now
    if delta > 0:
        relative = f"in {_span(delta)}"
    elif claim == "exp":
        relative = f"expired {_span(-delta)} ago"
    else:
        relative = f"{_span(-delta)} ago"
    return f"{when:%Y-%m-%d %H:%M:%S} UTC, {relative}"


def _span(seconds: float) -> str:
    """The largest unit of a duration and the next one: "4m 12s", "2h", "3d 1h"; enough to judge an expiry."""
    rest = round(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        if count or parts:
            parts.append(f"{count}{unit}" if count else "")
    return " ".join(part for part in parts[:2] if part) or "0s"


class SplitTokenContentview(contentviews.Contentview):
    name = "Split Token"
    syntax_highlight = "yaml"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock

    def render_priority(self, data: bytes, metadata: contentviews.Metadata) -> float:
        if _record(metadata) or any(_body_tokens(data, metadata)):
            return PRIORITY
        # A JWT only in the Authorization header takes over only an empty body: a real body keeps its own
        # view (JSON, form, …), and this one stays a click away.
        if not data and any(_authorization_tokens(metadata)):
            return PRIORITY
        return 0

    def prettify(self, data: bytes, metadata: contentviews.Metadata) -> str:
        now = self.clock()
        doc = CommentedMap()
        if record := _record(metadata):
            doc["split-token"] = _story(record, data, metadata)
            if record.event == "split":
                doc["kept back by the proxy"] = _decoded(record.header, record.claims, now)
        joined = bool(record) and record.event == "joined"
        for _token, header, claims in _authorization_tokens(metadata):
            label = "Authorization, forwarded upstream" if joined else "Authorization"
            doc[_unique(doc, label)] = _decoded(header, claims, now)
        for label, header, claims in _body_tokens(data, metadata):
            doc[_unique(doc, label)] = _decoded(header, claims, now)
        if not doc:
            raise ValueError("no JWT here, and the split-token addon did nothing with this message")
        out = io.StringIO()
        yaml = YAML(typ="rt", pure=True)
        yaml.width = 4096  # long claims (scope lists, URLs) stay on one line
        yaml.dump(doc, out)
        return out.getvalue()


class SplitTokenView:
    """Registers the content view when the script loads.

    mitmproxy keys content views by name, so a hot reload replaces the view instead of adding a second one.
    mitmproxy 12 cannot unregister a view (``contentviews.remove`` is a deprecated no-op): it stays until
    exit, showing only flows that hold a JWT or that the addon annotated.
    """

    def __init__(self) -> None:
        self.view = SplitTokenContentview()

    def load(self, loader: Loader) -> None:
        contentviews.add(self.view)


def _record(metadata: contentviews.Metadata) -> FlowState | None:
    """The addon's record of the flow, when it did something worth telling on this very message: a split
    shows on the response, whose body it rewrote; a join, a revocation or a refusal on the request."""
    flow, message = metadata.flow, metadata.http_message
    if not isinstance(flow, http.HTTPFlow) or message is None:
        return None
    record = FlowState.published(flow.metadata)
    if record is None:
        return None
    if message is flow.response:
        return record if record.event == "split" else None
    if message is flow.request and (record.refused or record.event in ("joined", "revoked")):
        return record
    return None


def _story(record: FlowState, data: bytes, metadata: contentviews.Metadata) -> CommentedMap:
    story = CommentedMap()
    if record.dpop:
        story["DPoP proof"] = record.dpop  # "proof verified", or the check it failed
    if record.jkt:
        story["DPoP-bound to key"] = record.jkt  # RFC 7638 thumbprint: a public key's, no secret
    if refused := record.refused:
        story["refused"] = refused.removeprefix("refused: ")
        if record.handle_id:
            story["handle_id"] = record.handle_id
        flow = metadata.flow
        if isinstance(flow, http.HTTPFlow) and flow.response:
            story["answered by the proxy"] = flow.response.status_code
        return story
    story["event"] = record.event
    if record.event == "split":
        received = CommentedMap()
        try:
            fields = TokenBody.parse(metadata.content_type or "", data).fields
        except Unparseable:
            fields = {}
        for name, what in (("access_token", "the JWT's signature"), ("refresh_token", "a random handle")):
            if isinstance(handle := fields.get(name), str):
                received[name] = redact(handle)
                received.yaml_add_eol_comment(f"{what}, {len(handle)} characters", name, column=0)
        story["client received"] = received
        if record.handle_id:
            story["handle_id"] = record.handle_id  # as the audit trail names it
    else:
        for key in ("handle", "handle_id", "subject", "revoked_kind"):
            if value := getattr(record, key):
                story[key] = value
    return story


def _decoded(header: dict[str, Any], claims: dict[str, Any], now: float) -> CommentedMap:
    annotated = CommentedMap(claims)
    for claim in TIME_CLAIMS:
        if claim in claims and (text := describe_time(claim, claims[claim], now)):
            # column 0: one space after the value; ruamel's own alignment drifts from line to line
            annotated.yaml_add_eol_comment(text, claim, column=0)
    return CommentedMap(header=CommentedMap(header), claims=annotated)


def _authorization_tokens(metadata: contentviews.Metadata) -> Iterator[tuple[str, dict, dict]]:
    message = metadata.http_message
    if isinstance(message, http.Request):
        values = message.headers.get_all("authorization")
        yield from _readable(token for value in values for token in jws.find_jws(value))


def _body_tokens(data: bytes, metadata: contentviews.Metadata) -> Iterator[tuple[str, dict, dict]]:
    """Each readable JWT in the body, labelled by its field when the body is a token endpoint's."""
    tokens = dict.fromkeys(jws.find_jws(data.decode("utf-8", "replace")))
    if not tokens:
        return
    try:
        fields = TokenBody.parse(metadata.content_type or "", data).fields
    except Unparseable:
        fields = {}
    names = {value: name for name, value in fields.items() if isinstance(value, str)}
    for token, header, claims in _readable(tokens):
        yield (f"{names[token]} (body)" if token in names else "body"), header, claims


def _readable(tokens: Iterable[str]) -> Iterator[tuple[str, dict, dict]]:
    """(token, header, claims) of each token that decodes; find_jws also finds look-alikes that do not."""
    for token in tokens:
        try:
            header, claims = jws.inspect(token)
        except jws.TokenRefused:
            continue
        yield token, header, claims


def _unique(doc: CommentedMap, label: str) -> str:
    n = 1
    key = label
    while key in doc:
        n += 1
        key = f"{label} ({n})"
    return key
