"""The URI a DPoP proof names (``htu``, RFC 9449 §4.3), normalised as RFC 3986 §6.2.2 and §6.2.3 say so that
two spellings of one URI compare equal."""

from __future__ import annotations

import ipaddress
import re

from .errors import ProofRefused

# An RFC 3986 URI reference: its characters, with "%" only as a percent-encoded triplet.
_URI = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")
# Its parts (RFC 3986 Appendix B), for a URI with an authority. Parsed here rather than by urllib, which
# drops what follows "]" in "[::1]x" and takes "x[::1]" for an IPv6 host.
_URI_PARTS = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<path>[^?#]*)[?#]?.*"
)
# The authority of an http(s) URI: no userinfo (RFC 9110 §4.2.4); IPv4 addresses are reg-names here.
_AUTHORITY = re.compile(
    r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<name>(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+))"
    r"(?::(?P<port>[0-9]{0,5}))?"
)
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_NOT_HTTP_URI = "DPoP htu is not an absolute http(s) URI"


def _normalise_percent(text: str) -> str:
    """Decode percent-encoded unreserved characters, upper-case the rest (RFC 3986 §6.2.2.1, §6.2.2.2)."""

    def fix(triplet: re.Match[str]) -> str:
        char = chr(int(triplet.group(1), 16))
        return char if char in _UNRESERVED else triplet.group().upper()

    return _PERCENT.sub(fix, text)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute path; an empty path becomes "/" (§6.2.3)."""
    segments = path.split("/")[1:]
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment != ".":
            kept.append(segment)
    if segments and segments[-1] in {".", ".."}:
        kept.append("")  # "/a/b/.." is "/a/": the last segment stays a directory
    return "/" + "/".join(kept)


def normalise_htu(url: str) -> str:
    """An http(s) URI as RFC 9449 §4.3 compares ``htu``: RFC 3986 §6.2.2 and §6.2.3 normalised, query and
    fragment dropped. Raises ProofRefused when ``url`` is not an absolute http(s) URI with a host."""
    parts = _URI_PARTS.fullmatch(url) if _URI.fullmatch(url) else None
    authority = _AUTHORITY.fullmatch(parts["authority"]) if parts else None
    if parts is None or authority is None or parts["scheme"].lower() not in _DEFAULT_PORTS:
        raise ProofRefused(_NOT_HTTP_URI)
    scheme = parts["scheme"].lower()
    port = int(authority["port"]) if authority["port"] else None
    if port is not None and port > 65535:
        raise ProofRefused(_NOT_HTTP_URI)
    if authority["ipv6"]:
        try:
            host = f"[{ipaddress.IPv6Address(authority['ipv6']).compressed}]"
        except ValueError:
            raise ProofRefused(_NOT_HTTP_URI) from None
    else:
        # Lower-cased after decoding, so that %41 and a are one host; an encoded triplet's hex digits are
        # lower-cased too, which keeps equal hosts equal.
        host = _normalise_percent(authority["name"]).lower()
    netloc = host if port in {None, _DEFAULT_PORTS[scheme]} else f"{host}:{port}"
    return f"{scheme}://{netloc}{_remove_dot_segments(_normalise_percent(parts['path']))}"
