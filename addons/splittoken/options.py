"""The ``splittoken_*`` options: declared once, parsed once into a frozen ``Settings``.

``parse_settings`` is the only reader of option values: it raises ``OptionInvalid`` naming the option, which
the shell turns into mitmproxy's ``OptionsError`` (like mitmproxy's own ``parse_modify_spec``). Hooks read the
settings, never ``ctx.options``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from mitmproxy import exceptions, flowfilter
from mitmproxy.utils import human

from . import jws
from .errors import OptionInvalid

# The path, not the query, must end in /token (…?next=/token is no token endpoint). ~u matches the whole URL.
DEFAULT_TOKEN_FILTER = '~m POST & ~u "^[^?]*/token($|[?])"'
# …/revoke (Keycloak, Okta, Auth0, Google) and …/revocation (oidc-provider's /token/revocation).
DEFAULT_REVOKE_FILTER = '~m POST & ~u "^[^?]*/(revoke|revocation)($|[?])"'
# RFC 7662: Keycloak …/token/introspect, oidc-provider /token/introspection.
DEFAULT_INTROSPECT_FILTER = '~m POST & ~u "^[^?]*/(introspect|introspection)($|[?])"'
# Discovery (RFC 8414, OIDC) and key sets: Keycloak and Google .../certs, Okta and Entra .../keys, Auth0
# /.well-known/jwks.json.
DEFAULT_PUBLIC_FILTER = (
    '~m GET & (~u "^[^?]*/[.]well-known/" | ~u "^[^?]*/(certs|keys|jwks|jwks[.]json)($|[?])")'
)


@dataclass(frozen=True)
class Option:
    name: str
    typespec: Any
    default: Any
    help: str


OPTIONS: tuple[Option, ...] = (
    Option("splittoken_token_filter", str, DEFAULT_TOKEN_FILTER,
           "Filter expression for token endpoint calls, whose JWT access tokens are split into handles."),
    Option("splittoken_api_filter", str, "", """
        Filter expression for API requests whose handle is re-joined into the JWT. Empty: every request
        arriving in reverse-proxy mode, and none in other modes. Anchor host patterns: ~d is a regex
        search, so '~d api.example.com' also matches 'api.example.com.evil.net'; write
        '~d ^api\\.example\\.com$'.
        """),
    Option("splittoken_revoke_filter", str, DEFAULT_REVOKE_FILTER,
           "Filter expression for RFC 7009 token revocation calls."),
    Option("splittoken_introspect_filter", str, DEFAULT_INTROSPECT_FILTER,
           "Filter expression for RFC 7662 introspection calls: a handle is swapped for the real token on "
           "its way to the authorization server, and the answer comes back without any token in it."),
    Option("splittoken_public_filter", str, DEFAULT_PUBLIC_FILTER, """
        Filter expression for public requests on API routes: when they carry no Authorization, they pass
        instead of being answered 401. Default: OAuth/OIDC discovery documents and key sets, which
        clients fetch without credentials. A request that does carry a handle is re-joined as usual.
        """),
    Option("splittoken_store", str, "",
           "Where handles live: a directory (diskcache; default: splittoken-store under confdir) "
           "or redis://[:password@]host:port/db (also rediss://)."),
    Option("splittoken_store_timeout_ms", int, 1000,
           "How long a store call may take before the proxy answers 503 (Redis socket timeout, "
           "diskcache busy timeout)."),
    Option("splittoken_max_ttl", int, 86400,
           "Longest life of an access handle, in seconds, whatever the token's exp says."),
    Option("splittoken_refresh_max_ttl", int, 30 * 86400,
           "Longest life of a refresh handle, in seconds; used when the response has no refresh_expires_in."),
    Option("splittoken_refresh_grace", int, 10,
           "Seconds a refresh handle just replaced by rotation still answers, with the same new handles."),
    Option("splittoken_leeway", int, 0,
           "Clock-skew leeway in seconds when judging whether a token or handle has expired."),
    Option("splittoken_algorithms", Sequence[str], list(jws.DEFAULT_ALGORITHMS),
           "JWS algorithms a token may be signed with; others are refused (alg none always is)."),
    Option("splittoken_jwks_url", str, "",
           "If set, verify each token's signature against this JWKS before storing it."),
    Option("splittoken_redact_api_responses", bool, False,
           "Replace the re-joined JWT with its handle wherever an API's response echoes it back (debug "
           "endpoints, error pages). Off by default: the demo's echo API shows what the API received."),
    Option("splittoken_allow_client_jwt", bool, False,
           "Let clients present a full JWT on API routes (forwarded unchanged); for migrations only."),
    Option("splittoken_log_joins", bool, True,
           "Log one line per re-joined API request. Each log line costs mitmproxy tens of microseconds "
           "(it is dispatched to every addon): turn off at high request rates; flow comments remain."),
    Option("splittoken_max_body", int, 1024 * 1024,
           "Largest token endpoint response, in bytes, that is parsed; larger ones are refused (502)."),
)  # fmt: skip

NAMES = frozenset(option.name for option in OPTIONS)
# mitmproxy's own options the settings depend on.
MITMPROXY_NAMES = frozenset({"confdir", "stream_large_bodies"})


@dataclass(frozen=True)
class Settings:
    token_filter: flowfilter.TFilter | None
    revoke_filter: flowfilter.TFilter | None
    introspect_filter: flowfilter.TFilter | None
    api_filter: flowfilter.TFilter | None  # None: every reverse-proxy request
    public_filter: flowfilter.TFilter | None
    store: str  # a directory or a Redis URL, resolved against confdir
    store_timeout: float  # seconds
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
    warnings: tuple[str, ...] = ()  # accepted, but worth telling the operator


def declare(loader: Any) -> None:
    for option in OPTIONS:
        loader.add_option(option.name, option.typespec, option.default, option.help)


def parse_settings(values: Mapping[str, Any]) -> Settings:
    """Settings from option values (``ctx.options`` or any mapping with every ``splittoken_*`` name and
    ``confdir``). Raises OptionInvalid for the first value the proxy refuses to run with."""
    api_spec = _text(values, "splittoken_api_filter")
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
        max_ttl=_count(values, "splittoken_max_ttl", minimum=1),
        refresh_max_ttl=_count(values, "splittoken_refresh_max_ttl", minimum=1),
        refresh_grace=_count(values, "splittoken_refresh_grace", minimum=0),
        leeway=_count(values, "splittoken_leeway", minimum=0),
        algorithms=_algorithms(values),
        jwks_url=_jwks_url(values),
        redact_api_responses=_flag(values, "splittoken_redact_api_responses"),
        allow_client_jwt=_flag(values, "splittoken_allow_client_jwt"),
        log_joins=_flag(values, "splittoken_log_joins"),
        max_body=_max_body(values),
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


def _max_body(values: Mapping[str, Any]) -> int:
    limit = _count(values, "splittoken_max_body", minimum=1)
    # proxyserver's option: absent where that addon is not loaded (a bare test context).
    streamed = values.get("stream_large_bodies") if isinstance(values, Mapping) else getattr(
        values, "stream_large_bodies", None
    )
    # mitmproxy streams any body larger than stream_large_bodies, re-checking as it arrives, and a streamed
    # token response would pass before the proxy could split it: no token response may be that large.
    if streamed and (size := human.parse_size(streamed)) is not None and size < limit:
        raise OptionInvalid(
            "stream_large_bodies",
            f"{streamed} would stream token responses past the split-token addon; set it to at least "
            f"splittoken_max_body ({limit} bytes), or lower splittoken_max_body",
        )
    return limit


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


def take_unconvertible(opts: Any) -> list[str]:
    """Apply the ``--set`` values of our options that mitmproxy deferred until the script declared them,
    one at a time; return one line for each that does not convert to its option's type, which is dropped.

    mitmproxy would convert them all at once after ``load`` and, on failure, drop the whole script without
    a word. ``deferred`` and ``process_deferred`` are the option manager's public surface for exactly this.
    """
    problems: list[str] = []
    deferred: dict[str, Any] = opts.deferred  # changed in place: the option manager owns it
    ours = {name: deferred.pop(name) for name in sorted(NAMES & deferred.keys())}
    others = dict(deferred)
    for name, value in ours.items():
        deferred.clear()
        deferred[name] = value
        try:
            opts.process_deferred()
        except exceptions.OptionsError as e:
            problems.append(str(e) if name in str(e) else f"{name}: {e}")
    deferred.clear()
    deferred.update(others)
    return problems


def unknown_names(opts: Any) -> list[str]:
    """A ``--set splittoken_…`` naming no option of ours (a typo) would be ignored for good: say so."""
    return [
        f"{name}: no such option (splittoken options: {', '.join(sorted(NAMES))})"
        for name in sorted(opts.deferred)
        if name.startswith("splittoken") and name not in NAMES
    ]
