"""Option values parsed once into a frozen ``Settings``, which is what the hooks read.

``parse_settings`` is the only reader of option values: it raises ``OptionInvalid`` naming the option, which
the shell turns into mitmproxy's ``OptionsError`` (like mitmproxy's own ``parse_modify_spec``). Hooks read the
settings, never ``ctx.options``.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

import jwt
from mitmproxy import flowfilter
from mitmproxy.utils import human

from .errors import OptionInvalid
from .metrics import parse_listen_address

# A serialized origin (RFC 6454 §6.2): a scheme, a host (a name, an IPv4 or a bracketed IPv6 address) and
# an optional port; "null" (sandboxed pages) is no origin to trust.
_ORIGIN = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://([a-zA-Z0-9.-]+|\[[0-9a-fA-F:.]+\])(:[0-9]{1,5})?")
# splittoken_public_urls: an http(s) origin, then the listen port it stands for.
_PUBLIC_URL = re.compile(
    r"(?P<origin>https?://([a-zA-Z0-9.-]+|\[[0-9a-fA-F:.]+\])(:[0-9]{1,5})?)@(?P<port>[0-9]{1,5})"
)

DPoPMode = Literal["off", "optional", "required"]


@dataclass(frozen=True)
class Settings:
    token_filter: flowfilter.TFilter | None
    revoke_filter: flowfilter.TFilter | None
    introspect_filter: flowfilter.TFilter | None
    api_filter: flowfilter.TFilter | None  # None: every reverse-proxy request
    public_filter: flowfilter.TFilter | None
    store: str  # a directory or a Redis URL, resolved against confdir
    store_timeout: float  # seconds
    cache_size: int  # opened records kept in memory; 0: none
    max_ttl: int
    refresh_max_ttl: int
    refresh_grace: int
    leeway: int
    algorithms: frozenset[str]
    jwks_url: str
    redact_api_responses: bool
    allow_client_jwt: bool
    log_joins: bool
    max_body: int
    cors_origins: frozenset[str] = frozenset()  # lower case; "*" for any origin
    refresh_lease: int = 10  # seconds
    min_replicas: int | None = None  # None: automatic
    dpop: DPoPMode = "optional"
    dpop_window: int = 60  # seconds
    dpop_nonce: bool = False
    public_urls: Mapping[int, str] = field(default_factory=dict)  # listen port -> origin clients use
    metrics: tuple[str, int] | None = None  # (host, port) to serve /metrics on; None: off
    audit_log: str = ""  # the audit trail's file; empty: off
    stream_large_bodies: int | None = None  # mitmproxy streams bodies larger than this (bytes)
    warnings: tuple[str, ...] = ()  # accepted, but worth telling the operator


def parse_settings(values: Mapping[str, Any]) -> Settings:
    """Settings from option values (``ctx.options`` or any mapping with every ``splittoken_*`` name and
    ``confdir``). Raises OptionInvalid for the first value the proxy refuses to run with."""
    api_spec = _text(values, "splittoken_api_filter")
    streamed = _stream_threshold(values)
    warnings = ()
    if unanchored_domain(api_spec):
        warnings = (
            f"splittoken_api_filter {api_spec!r} has an unanchored ~d: it also matches look-alike hosts "
            "such as api.example.com.evil.net; anchor it with ^…$",
        )
    return Settings(
        token_filter=parse_filter(values, "splittoken_token_filter"),
        revoke_filter=parse_filter(values, "splittoken_revoke_filter"),
        introspect_filter=parse_filter(values, "splittoken_introspect_filter"),
        api_filter=parse_filter(values, "splittoken_api_filter"),
        public_filter=parse_filter(values, "splittoken_public_filter"),
        store=_store(values),
        store_timeout=_count(values, "splittoken_store_timeout_ms", minimum=1) / 1000,
        cache_size=_count(values, "splittoken_cache_size", minimum=0),
        max_ttl=_count(values, "splittoken_max_ttl", minimum=1),
        refresh_max_ttl=_count(values, "splittoken_refresh_max_ttl", minimum=1),
        refresh_grace=_count(values, "splittoken_refresh_grace", minimum=0),
        leeway=_count(values, "splittoken_leeway", minimum=0),
        algorithms=_algorithms(values),
        jwks_url=_jwks_url(values),
        redact_api_responses=_flag(values, "splittoken_redact_api_responses"),
        allow_client_jwt=_flag(values, "splittoken_allow_client_jwt"),
        log_joins=_flag(values, "splittoken_log_joins"),
        max_body=_max_body(values, streamed),
        cors_origins=_cors_origins(values),
        refresh_lease=_count(values, "splittoken_refresh_lease", minimum=1),
        min_replicas=_min_replicas(values),
        dpop=_dpop(values),
        dpop_window=_count(values, "splittoken_dpop_window", minimum=1),
        dpop_nonce=_flag(values, "splittoken_dpop_nonce"),
        public_urls=_public_urls(values),
        metrics=_metrics(values),
        audit_log=os.path.expanduser(_text(values, "splittoken_audit_log")),
        stream_large_bodies=streamed,
        warnings=warnings,
    )


def parse_filter(values: Mapping[str, Any], name: str) -> flowfilter.TFilter | None:
    """A filter option's expression; None for an empty one."""
    spec = _text(values, name)
    if not spec.strip():
        return None
    try:
        return flowfilter.parse(spec)
    except ValueError as e:
        raise OptionInvalid(name, f"invalid filter expression {spec!r}: {e}") from None


def unanchored_domain(spec: str) -> bool:
    """Whether a filter has a ~d pattern that is not anchored at both ends (a look-alike host matches)."""
    words = spec.replace("(", " ").replace(")", " ").split()
    for word, argument in itertools.pairwise(words):
        pattern = argument.strip("\"'")
        if word == "~d" and not (pattern.startswith("^") and pattern.endswith("$")):
            return True
    return False


def _value(values: Mapping[str, Any], name: str) -> Any:
    return values[name] if isinstance(values, Mapping) else getattr(values, name)


def _text(values: Mapping[str, Any], name: str) -> str:
    value = _value(values, name)
    if not isinstance(value, str):
        raise OptionInvalid(name, f"must be text, not {value!r}")
    return value


def _count(values: Mapping[str, Any], name: str, *, minimum: int) -> int:
    value = _value(values, name)
    # bool is an int to Python (and to mitmproxy's type check): "true" is no number of seconds.
    if not isinstance(value, int) or isinstance(value, bool):
        raise OptionInvalid(name, f"must be a whole number, not {value!r}")
    if value < minimum:
        qualifier = "positive" if minimum == 1 else "not negative"
        raise OptionInvalid(name, f"must be {qualifier}, not {value}")
    return value


def _flag(values: Mapping[str, Any], name: str) -> bool:
    value = _value(values, name)
    if not isinstance(value, bool):
        raise OptionInvalid(name, f"must be true or false, not {value!r}")
    return value


def _algorithms(values: Mapping[str, Any]) -> frozenset[str]:
    name = "splittoken_algorithms"
    chosen = _value(values, name)
    known = set(jwt.algorithms.get_default_algorithms()) - {"none"}
    unknown = [a for a in chosen if a not in known]
    if unknown or not chosen:
        problem = f"not JWS signature algorithms: {unknown or 'empty list'}"
        raise OptionInvalid(name, f"{problem}; choose from {', '.join(sorted(known))}")
    return frozenset(chosen)


def _stream_threshold(values: Mapping[str, Any]) -> int | None:
    # proxyserver's option: absent where that addon is not loaded (a bare test context).
    streamed = (
        values.get("stream_large_bodies")
        if isinstance(values, Mapping)
        else getattr(values, "stream_large_bodies", None)
    )
    return human.parse_size(streamed) if streamed else None


def _max_body(values: Mapping[str, Any], streamed: int | None) -> int:
    limit = _count(values, "splittoken_max_body", minimum=1)
    # mitmproxy streams any body larger than stream_large_bodies, re-checking as it arrives, and a streamed
    # token response would pass before the proxy could split it: no token response may be that large.
    if streamed is not None and streamed < limit:
        raise OptionInvalid(
            "stream_large_bodies",
            f"{_value(values, 'stream_large_bodies')} would stream token responses past the split-token "
            f"addon; set it to at least splittoken_max_body ({limit} bytes), or lower splittoken_max_body",
        )
    return limit


def _cors_origins(values: Mapping[str, Any]) -> frozenset[str]:
    """Origins as browsers send them (RFC 6454: scheme://host[:port], no path); '*' for any."""
    name = "splittoken_cors_origins"
    chosen = _value(values, name)
    if isinstance(chosen, str) or not all(isinstance(o, str) for o in chosen):
        raise OptionInvalid(name, f"must be a list of origins, not {chosen!r}")
    for entry in chosen:
        if entry != "*" and not _ORIGIN.fullmatch(entry):
            raise OptionInvalid(name, f"not an origin (scheme://host[:port], no path): {entry[:80]!r}")
    return frozenset(o.lower() for o in chosen)


def _metrics(values: Mapping[str, Any]) -> tuple[str, int] | None:
    address = _text(values, "splittoken_metrics").strip()
    try:
        return parse_listen_address(address) if address else None
    except ValueError as e:
        raise OptionInvalid("splittoken_metrics", str(e)) from None


def _dpop(values: Mapping[str, Any]) -> DPoPMode:
    mode = _text(values, "splittoken_dpop")
    if mode not in get_args(DPoPMode):
        raise OptionInvalid("splittoken_dpop", f"must be off, optional or required, not {mode[:80]!r}")
    return cast(DPoPMode, mode)


def _public_urls(values: Mapping[str, Any]) -> dict[int, str]:
    name = "splittoken_public_urls"
    chosen = _value(values, name)
    if isinstance(chosen, str) or not all(isinstance(entry, str) for entry in chosen):
        raise OptionInvalid(name, f"must be a list of origin@port, not {chosen!r}")
    urls: dict[int, str] = {}
    for entry in chosen:
        m = _PUBLIC_URL.fullmatch(entry)
        port = int(m["port"]) if m else 0
        if not m or not 0 < port < 65536:
            raise OptionInvalid(name, f"not origin@port (https://api.example.com@8443): {entry[:80]!r}")
        if port in urls:
            raise OptionInvalid(name, f"listen port {port} named twice")
        urls[port] = m["origin"]
    return urls


def _min_replicas(values: Mapping[str, Any]) -> int | None:
    chosen = _text(values, "splittoken_min_replicas").strip()
    if chosen == "auto":
        return None
    if not (chosen.isascii() and chosen.isdigit()):
        raise OptionInvalid("splittoken_min_replicas", f"must be auto or a whole number, not {chosen[:80]!r}")
    return int(chosen)


def _jwks_url(values: Mapping[str, Any]) -> str:
    url = _text(values, "splittoken_jwks_url")
    if url and not url.startswith(("https://", "http://")):
        raise OptionInvalid("splittoken_jwks_url", f"must be an http(s) URL, not {url!r}")
    return url


def _store(values: Mapping[str, Any]) -> str:
    spec = _text(values, "splittoken_store")
    if not spec:
        return os.path.join(os.path.expanduser(_value(values, "confdir")), "splittoken-store")
    return spec  # opening it (open_store) refuses what is not a directory or a store URL
