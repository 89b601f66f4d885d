"""The ``splittoken_*`` options, declared once: names, types, defaults and help. settings.py parses their
values; this module also catches what mitmproxy would let through silently (an unconvertible ``--set``, a
mistyped option name).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mitmproxy import exceptions

from . import jws

# The path, not the query, must end in /token (…?next=/token is no token endpoint). ~u matches the whole URL.
DEFAULT_TOKEN_FILTER = '~m POST & ~u "^[^?]*/token($|[?])"'
# …/revoke (Keycloak, Okta, Auth0, Google) and …/revocation (oidc-provider's /token/revocation).
DEFAULT_REVOKE_FILTER = '~m POST & ~u "^[^?]*/(revoke|revocation)($|[?])"'
# RFC 7662: Keycloak …/token/introspect, oidc-provider /token/introspection.
DEFAULT_INTROSPECT_FILTER = '~m POST & ~u "^[^?]*/(introspect|introspection)($|[?])"'
# What an authorization server serves to anyone, by the names real providers give it (not any path that
# merely ends in /keys): discovery documents (OIDC at the issuer's path, RFC 8414 and RFC 9728 after
# /.well-known/), key sets (Keycloak …/openid-connect/certs, Okta /oauth2[/{server}]/v1/keys, Entra and
# ADFS /{tenant}/discovery[/v2.0]/keys, Google /oauth2/v3/certs, Auth0 and Cognito …/.well-known/jwks.json,
# oidc-provider /jwks) and the pages a browser opens without credentials (authorization endpoints: Keycloak
# …/openid-connect/auth and /logout, Okta …/v1/authorize, Entra /{tenant}/oauth2[/v2.0]/authorize, Google
# /o/oauth2/v2/auth, Auth0 /authorize, oidc-provider /auth). Matched on the path as the server reads it;
# a discovery document passing through adds the endpoints it names (discovery.Discovered).
_PUBLIC_PATHS = "|".join((
    "(/[^?]*)?/[.]well-known/(openid-configuration|oauth-authorization-server|jwks[.]json)",
    "/[.]well-known/(openid-configuration|oauth-authorization-server|oauth-protected-resource)(/[^?]*)?",
    "(/auth)?/realms/[^/?]+/protocol/openid-connect/(auth|certs|logout)",
    "/oauth2(/[^/?]+)?/v1/(keys|authorize)",
    "/[^/?]+/discovery(/v2[.]0)?/keys",
    "/[^/?]+/oauth2(/v2[.]0)?/authorize",
    "/oauth2/v[13]/certs",
    "/o/oauth2(/v2)?/auth",
    "/(jwks|auth|authorize)",
))  # fmt: skip
DEFAULT_PUBLIC_FILTER = f'~m GET & ~u "^[a-z]+://[^/?#]+({_PUBLIC_PATHS})([?]|$)"'


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
    Option("splittoken_cors_origins", Sequence[str], [], """
        Browser origins (scheme://host[:port]) that may read the answers the proxy makes itself (401, 400,
        503, 502, 504), with credentials; '*' lets any origin read them without. Without it an origin may
        read what the upstream lets it read on the same route.
        """),
    Option("splittoken_store", str, "",
           "Where handles live: a directory (diskcache; default: splittoken-store under confdir) "
           "or redis://[:password@]host:port/db (also rediss://)."),
    Option("splittoken_cache_size", int, 4096, """
        Opened access records kept in memory (entries, about 1 KiB each; 0: none), so that a join of a
        recently used handle needs no store read and no unsealing. A record that any proxy revokes or replaces
        is dropped within 100 ms (Redis: client tracking; a directory: a change log polled every 20 ms), and
        while the store cannot say what changed, nothing is answered from memory (behind Sentinel: while the
        feed's server is not the master the sentinels name; on a Cluster: while any master is not heard).
        """),
    Option("splittoken_store_timeout_ms", int, 1000,
           "How long a store call may take before the proxy answers 503 (Redis socket timeout, "
           "diskcache busy timeout)."),
    Option("splittoken_max_ttl", int, 86400,
           "Longest life of an access handle, in seconds, whatever the token's exp says."),
    Option("splittoken_refresh_max_ttl", int, 30 * 86400,
           "Longest life of a refresh handle, in seconds; used when the response has no refresh_expires_in."),
    Option("splittoken_refresh_grace", int, 10,
           "Seconds a refresh handle just replaced by rotation still answers, with the same new handles."),
    Option("splittoken_refresh_lease", int, 10, """
        Seconds a proxy's claim on a refresh handle lasts in the store, renewed every third of it while the
        refresh is upstream: proxies on one store send one refresh of a handle at a time, and the others
        answer with its new handles. A proxy that dies mid-refresh blocks the handle this long.
        """),
    Option("splittoken_min_replicas", str, "auto", """
        Redis replicas that must have a write (WAIT) before the client gets its answer, so that a failover
        cannot lose a handle the client holds; fewer answer 503. auto: 1 when the master has a replica
        online, else 0. Not for Redis Cluster (0 or auto) nor a directory (auto).
        """),
    Option("splittoken_leeway", int, 0,
           "Clock-skew leeway in seconds when judging whether a token or handle has expired."),
    Option("splittoken_algorithms", Sequence[str], list(jws.DEFAULT_ALGORITHMS),
           "JWS algorithms a token may be signed with; others are refused (alg none always is)."),
    Option("splittoken_jwks_url", str, "",
           "If set, verify each token's signature against this JWKS before storing it."),
    Option("splittoken_redact_api_responses", bool, True, """
        Replace the re-joined JWT (or its signing input or claims) with its handle wherever an API's answer
        repeats it, in headers and body, as is, JSON-escaped or percent-encoded, streamed answers included;
        an answer that would still show it is refused (502). Off only to see what the API received (the
        demo turns it off).
        """),
    Option("splittoken_allow_client_jwt", bool, False,
           "Let clients present a full JWT on API routes (forwarded unchanged); for migrations only."),
    Option("splittoken_log_joins", bool, False,
           "Also log one line per re-joined API request (off by default: each log line costs mitmproxy tens "
           "of microseconds, dispatched to every addon; flow comments and the audit trail remain)."),
    Option("splittoken_max_body", int, 1024 * 1024,
           "Largest token endpoint response, in bytes, that is parsed; larger ones are refused (502)."),
    Option("splittoken_metrics", str, "", """
        host:port ([v6]:port for IPv6) where Prometheus metrics are served at /metrics, on a listener of
        their own, not through the proxy's; e.g. 127.0.0.1:9100. Empty: no metrics.
        """),
    Option("splittoken_audit_log", str, "", """
        File the audit trail is appended to: one JSON object per line for every split, join, refusal,
        refresh, revocation and introspection, naming handles only by a non-reversible handle_id, never a
        token or a claim other than sub. Reopened after logrotate renames it. Empty: no audit trail.
        """),
    Option("splittoken_dpop", str, "optional", """
        DPoP (RFC 9449) sender-constrained handles. optional: a token request with a valid DPoP proof gets
        handles bound to the proof's key, usable only with 'Authorization: DPoP' and a proof by that key;
        one without gets bearer handles. required: a token request without a valid proof is refused
        (400 invalid_dpop_proof). off: DPoP headers are not looked at.
        """),
    Option("splittoken_dpop_window", int, 60,
           "Seconds a DPoP proof's iat may be off from the proxy's clock, either way; a proof's jti is "
           "remembered in the store for twice as long, so that it is accepted once."),
    Option("splittoken_dpop_nonce", bool, False, """
        Demand a server nonce (RFC 9449 §8, §9) in every DPoP proof: a proof without the current one is
        answered use_dpop_nonce with the nonce in DPoP-Nonce. The nonce changes every splittoken_dpop_window
        seconds (the previous one stays good for one more), and is shared by every proxy on the store.
        """),
    Option("splittoken_public_urls", Sequence[str], [], """
        The URL clients use to reach a listener, as 'https://api.example.com@8443' (origin, then the listen
        port, as in --mode reverse:…@port): what DPoP proofs must name in htu. Needed behind a load balancer
        or TLS terminator, or for a listener clients reach by name; without an entry a reverse-proxy
        listener is the scheme, address and port the client connected to.
        """),
)  # fmt: skip

NAMES = frozenset(option.name for option in OPTIONS)
# mitmproxy's own options the settings depend on.
MITMPROXY_NAMES = frozenset({"confdir", "stream_large_bodies"})


def declare(loader: Any) -> None:
    for option in OPTIONS:
        loader.add_option(option.name, option.typespec, option.default, option.help)


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
