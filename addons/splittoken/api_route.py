"""The API route: a handle comes in, the JWT it was cut from goes upstream, and none of it comes back.

Done on the request headers alone, so that streamed request bodies work too. Whatever cannot be joined is
answered here with the RFC 6750 error; the API never sees it. An answer that repeats the JWT (an echo
endpoint, a debug header, an error page) reaches the client with the handle in its place, streamed answers
included (``redaction``).
"""

from __future__ import annotations

import logging
import sys
import time
import zlib
from collections.abc import Callable, Sequence

import brotli
from mitmproxy import http

from . import jws, leaks, policy
from .answers import Answers, annotate
from .audit import Reason, handle_id
from .discovery import Discovered
from .events import Events
from .policy import Refusal
from .possession import Possession
from .redaction import Echo, Scanner
from .routing import (
    destination_is_named,
    in_reverse_mode,
    is_cors_preflight,
    logged_path,
    matches,
)
from .settings import Settings
from .state import FlowState, redact
from .vault import Vault

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd  # mitmproxy's own zstd before Python 3.14

logger = logging.getLogger("splittoken")

_NO_BODY = frozenset({204, 304})

Decoder = Callable[[bytes, bool], bytes]  # (chunk, final) -> decoded bytes


class ApiRoute:
    def __init__(
        self, settings: Settings, vault: Vault, answers: Answers, events: Events,
        discovered: Discovered,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.vault = vault
        self.answers = answers
        self.events = events
        self.discovered = discovered
        self.possession = Possession(settings, vault)

    async def request(self, flow: http.HTTPFlow, st: FlowState) -> None:
        if "authorization" not in flow.request.headers and (is_cors_preflight(flow) or self._public(flow)):
            # Nothing to join, and nothing a client must be stopped from sending: browsers never send
            # credentials on a preflight, and discovery documents and key sets are public by design.
            st.public = not is_cors_preflight(flow)
            return None
        if refusal := self._precheck(flow):
            return self.answers.refuse(flow, st, refusal)
        presented = await self.possession.read_authorization(flow, st)
        if isinstance(presented, Refusal):
            return self.answers.refuse(flow, st, presented)
        if presented.is_jwt:
            if self.settings.allow_client_jwt:
                annotate(flow, "client presented a full JWT (allowed by splittoken_allow_client_jwt)")
                return None
            refusal = policy.invalid_token("present the handle, not a JWT", Reason.CLIENT_JWT)
            return self.answers.refuse(flow, st, refusal)
        handle = presented.credential
        started = time.perf_counter()
        record = await self.vault.find(handle)
        if refusal := self.possession.judge(presented, record, st):
            return self.answers.refuse(flow, st, refusal, handle)
        if record is None or record.kind != "access":
            refusal = policy.invalid_token("unknown, expired or revoked handle")
            return self.answers.refuse(flow, st, refusal, handle)
        st.swapped_in = jws.join(record.secret, handle)
        flow.request.headers["authorization"] = f"Bearer {st.swapped_in}"
        st.event, st.handle, st.subject = "joined", redact(handle), record.subject
        st.handle_id = handle_id(handle)
        self.events.join(flow, st, time.perf_counter() - started)
        bound = "DPoP-bound " if record.jkt else ""
        annotate(flow, f"re-joined {bound}handle {redact(handle)} for sub={record.subject or '?'}")
        if self.settings.log_joins:
            logger.info("joined handle %s", redact(handle))
        return None

    def _public(self, flow: http.HTTPFlow) -> bool:
        """Whether a request without credentials asks for what an authorization server serves to anyone: by
        the public filter, on the path as the server reads it, or named by a discovery document."""
        public_filter = self.settings.public_filter
        if public_filter is None:
            return False
        return matches(public_filter, flow) or self.discovered.serve(flow)

    def _precheck(self, flow: http.HTTPFlow) -> Refusal | None:
        if not in_reverse_mode(flow) and not destination_is_named(flow):
            # ~d matches the Host header as well as the destination: a request to evil.net that says
            # "Host: api.example.com" would match an api filter naming api.example.com.
            return policy.invalid_request("Host header does not name the destination", Reason.DESTINATION)
        if flow.request.method == "TRACE":
            return policy.invalid_request("TRACE would echo the token back", Reason.METHOD)
        return None

    def responseheaders(self, flow: http.HTTPFlow, st: FlowState) -> None:
        """Before the answer's headers leave: the JWT goes out of them, and a body that streams is scanned
        as it passes."""
        echo = self._echo(st)
        response = flow.response
        if echo is None or response is None:
            return
        _redact_fields(response.headers, echo)
        # An authorization server's answers are judged whole (token_route), never streamed past it.
        if not st.authorization_server and self._streams(flow):
            self._scan_stream(flow, echo)

    def response(self, flow: http.HTTPFlow, st: FlowState) -> None:
        response = flow.response
        assert response
        echo = self._echo(st)
        if echo is None:
            if st.public and self._hands_out_a_token(response):
                refusal = policy.bad_gateway("an authorization response carrying a token (implicit grant)")
                return self.answers.refuse(flow, st, refusal)
            if st.event is None:
                self.discovered.learn(flow)
            return
        if response.trailers:
            _redact_fields(response.trailers, echo)
        if isinstance(response.stream, StreamedAnswer):
            if response.stream.cut:
                # The headers are gone, so no refusal: cut short, which a chunked or HTTP/2 client sees.
                logger.error("streamed answer on %s quoting the token: cut short", logged_path(flow))
                flow.kill()
            return
        try:
            body = response.get_content()
        except ValueError:  # an encoding mitmproxy cannot undo: what the client reads in it is unknown
            refusal = policy.api_response_refused("cannot decode it to look for the token")
            return self.answers.refuse(flow, st, refusal)
        if not body:
            return
        redacted = echo.redact(body)
        if redacted is None:
            refusal = policy.api_response_refused("it quotes the token in a form that cannot be rewritten")
            return self.answers.refuse(flow, st, refusal)
        if redacted is not body:
            response.content = redacted

    def _hands_out_a_token(self, response: http.Response) -> bool:
        """Whether an authorization server's page hands out a token that only the token endpoint may (and
        whose answers the proxy splits): the implicit grant and hybrid flows, in any response mode."""
        body = b""
        if 200 <= response.status_code < 300 and not response.stream:
            try:
                body = response.get_content() or b""
            except ValueError:  # an encoding mitmproxy cannot undo: nor can a browser, as a page
                body = b""
        return leaks.hands_out_token(response.headers.get_all("location"), body)

    def _echo(self, st: FlowState) -> Echo | None:
        """What to look for in the answer to a joined request; made once, for its headers and its body."""
        if st.echo is None and st.event == "joined" and self.settings.redact_api_responses and st.swapped_in:
            st.echo = Echo(st.swapped_in, st.swapped_in.rpartition(".")[2])
        return st.echo

    def _streams(self, flow: http.HTTPFlow) -> bool:
        response = flow.response
        assert response
        if flow.request.method == "HEAD" or response.status_code < 200 or response.status_code in _NO_BODY:
            return False
        if response.stream:
            return True
        # mitmproxy buffers a body of unknown length until it outgrows stream_large_bodies, then streams the
        # rest as is, with no hook in between: such a body is scanned as a stream from its first byte.
        return self.settings.stream_large_bodies is not None and "content-length" not in response.headers

    def _scan_stream(self, flow: http.HTTPFlow, echo: Echo) -> None:
        response = flow.response
        assert response
        codings = [c.strip().lower() for c in response.headers.get("content-encoding", "").split(",")]
        codings = [c for c in codings if c not in ("", "identity")]
        decoders = [_decoder(c) for c in reversed(codings)]
        if None in decoders:
            # Compressed bytes cannot be searched, and this coding cannot be undone as it streams.
            logger.error("streamed answer on %s in %r cannot be scanned: closed", logged_path(flow), codings)
            flow.kill()
            return
        if codings:
            # Decoded as it streams and passed on decoded: the client reads what the proxy has read.
            del response.headers["content-encoding"]
        # A handle is shorter than the JWT: the length is known only once the body has passed.
        response.headers.pop("content-length", None)
        if response.http_version == flow.request.http_version == "HTTP/1.1":
            # Chunked rather than read-until-close: a body cut short then shows as such.
            response.headers["transfer-encoding"] = "chunked"
        response.stream = StreamedAnswer(Scanner(echo), [d for d in decoders if d])


def _redact_fields(headers: http.Headers, echo: Echo) -> None:
    redacted = echo.redact_fields(headers.fields)
    if redacted != headers.fields:
        headers.fields = redacted


class StreamedAnswer:
    """mitmproxy's stream callable for an answer to a joined request: decoded, scanned, passed on. ``cut``:
    the rest was withheld (a spelling that cannot be rewritten, a broken encoding)."""

    def __init__(self, scanner: Scanner, decoders: Sequence[Decoder]) -> None:
        self._scanner = scanner
        self._decoders = decoders
        self.cut = False

    def __call__(self, chunk: bytes) -> list[bytes]:
        final = not chunk  # mitmproxy ends a stream with an empty chunk
        if self.cut:
            return []
        try:
            for decode in self._decoders:
                chunk = decode(chunk, final)
        except Exception as e:  # raised here, it would tear down the connection's handler
            logger.error("streamed answer not decodable: %s", type(e).__name__)
            self.cut = True
            return []
        out = self._scanner.feed(chunk, final)
        self.cut = self._scanner.withheld
        # An empty chunk would end a chunked body early: nothing is sent instead.
        return [out] if out else []


class _Inflate:
    """gzip, zlib-wrapped deflate, or the raw deflate some servers send as "deflate" (as mitmproxy reads)."""

    def __init__(self, raw_fallback: bool) -> None:
        self._inflater = zlib.decompressobj(47)  # 32 + 15: a gzip or zlib header, detected
        self._raw_fallback = raw_fallback
        self._started = False

    def __call__(self, chunk: bytes, final: bool) -> bytes:
        if final:
            return self._inflater.flush()
        try:
            out = self._inflater.decompress(chunk)
        except zlib.error:
            if self._started or not self._raw_fallback:
                raise
            self._inflater = zlib.decompressobj(-15)
            out = self._inflater.decompress(chunk)
        self._started = True
        return out


def _decoder(coding: str) -> Decoder | None:
    """A decoder of one content coding, chunk by chunk; None for one mitmproxy does not read either."""
    if coding in ("gzip", "x-gzip", "deflate"):
        return _Inflate(raw_fallback=coding == "deflate")
    if coding == "br":
        brotli_decoder = brotli.Decompressor()
        return lambda chunk, final: brotli_decoder.process(chunk)
    if coding == "zstd":
        zstd_decoder = zstd.ZstdDecompressor()
        return lambda chunk, final: zstd_decoder.decompress(chunk) if chunk else b""
    return None
