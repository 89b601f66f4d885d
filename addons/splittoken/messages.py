"""Reading HTTP messages as the other side reads them: bodies without their Content-Encoding, token endpoint
bodies, OAuth error codes. Every reading is bounded."""

from __future__ import annotations

from mitmproxy import http

from . import bodies
from .bodies import TokenBody
from .errors import SplitTokenError

# Error answers are small; a larger one is not worth reading for its code.
_ERROR_BODY_LIMIT = 65536


def request_body(request: http.Request) -> TokenBody | None:
    """A token, revocation or introspection request's fields; None for a body the proxy cannot read, which
    holds nothing of the proxy's: the authorization server will judge it."""
    try:
        raw = request.get_content()  # None for a body mitmproxy streamed on: never a token request's
        return None if raw is None else TokenBody.parse(request.headers.get("content-type", ""), raw)
    except ValueError:  # Unparseable, or a Content-Encoding mitmproxy cannot undo
        return None


def decoded(response: http.Response, limit: int) -> bytes:
    """The body without its Content-Encoding, bounded. Raises TooLarge or Unparseable."""
    encoding = response.headers.get("content-encoding", "")
    return bodies.decode_body(response.raw_content or b"", encoding, limit)


def error_code(response: http.Response) -> str | None:
    """The OAuth error code of an error answer (RFC 6749 §5.2)."""
    try:
        raw = decoded(response, _ERROR_BODY_LIMIT)
        body = TokenBody.parse(response.headers.get("content-type", ""), raw)
    except SplitTokenError:
        return None
    error = body.fields.get("error")
    return error if isinstance(error, str) else None
