"""DPoP proofs (RFC 9449): check one as §4.3 says, and make one (the client's side, for tests and the demo).

Pure: no I/O, no mitmproxy. What needs memory or the store stays with the caller: remembering each accepted
``jti`` (replay, §11.1; key it on the ``jti``, not on the proof's bytes, since an ECDSA signature can be
re-encoded), issuing nonces, and comparing ``Proof.jkt`` with the key a handle is bound to.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
import secrets
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

# Registered asymmetric JWS algorithms (RFC 7518, RFC 8037, RFC 8812). A proof may use no other, whatever
# the caller allows: "none" and HMAC prove nothing about a private key.
ASYMMETRIC_ALGORITHMS: tuple[str, ...] = (
    "RS256", "RS384", "RS512",
    "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "ES256K",
    "EdDSA",
)  # fmt: skip

# A proof is a few hundred bytes, one with an RSA-8192 key about 4 KB: anything larger is refused unparsed.
MAX_PROOF_LENGTH = 8192
# A UUID is 36 characters, 256 random bits in base64url 43; the caller keeps every jti for a window.
MAX_JTI_LENGTH = 256

_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
# The JWK members of a private or symmetric key (RFC 7518 §6.2.2, §6.3.2, §6.4.1; RFC 8037 §2).
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# The members a JWK thumbprint covers (RFC 7638 §3.2, RFC 8037 §2).
_THUMBPRINT_MEMBERS: dict[str, tuple[str, ...]] = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
}
# pyjwt warns by default about RSA keys under 2048 bits; a proof with one is refused instead.
_PROOF_JWS = jwt.PyJWS(algorithms=ASYMMETRIC_ALGORITHMS, options={"enforce_minimum_key_length": True})

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

ProofKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey


class ProofRefused(ValueError):
    """The DPoP proof is not acceptable. The message is a fixed sentence: safe to log and to send."""

    error = "invalid_dpop_proof"


class NonceRequired(ProofRefused):
    """The proof is sound but lacks a nonce the server currently accepts (RFC 9449 §8, §9)."""

    error = "use_dpop_nonce"


@dataclass(frozen=True)
class Proof:
    """What an accepted proof tells the caller."""

    jkt: str  # RFC 7638 thumbprint of the proof's key: what a handle is bound to
    jti: str  # to be remembered for the window, so that the proof is used once
    iat: float
    nonce: str | None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def access_token_hash(token: str) -> str:
    """The ``ath`` claim for a token: base64url(SHA-256(ASCII)) (RFC 9449 §4.2)."""
    return _b64(hashlib.sha256(token.encode()).digest())


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint: the required members only, sorted, no whitespace, base64url.

    Hashed as sent, not as re-encoded from the key, so that it is the value an authorization server that
    binds tokens itself (``cnf.jkt``) computes from the same proof. Raises ValueError for another kty.
    """
    try:
        required = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    except (KeyError, TypeError):
        raise ValueError("not a public JWK of a known key type") from None
    canonical = json.dumps(required, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _b64(hashlib.sha256(canonical.encode()).digest())


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


def verify_proof(
    proof: str,
    *,
    method: str,
    url: str,
    now: float,
    window: float = 60,
    algorithms: Collection[str] = ASYMMETRIC_ALGORITHMS,
    access_token: str | None = None,
    nonces: Collection[str] | None = None,
) -> Proof:
    """Check a ``DPoP`` header value as RFC 9449 §4.3 says, for a request of ``method`` to ``url``.

    ``proof`` is the header as mitmproxy gives it: repeated fields joined by commas. ``access_token`` is
    what the client presented with the proof (the handle, on an API call): then ``ath`` must be its hash.
    Without one, an ``ath`` is ignored as any unknown claim is (RFC 7519 §4): §4.3 asks for it only beside
    an access token, and ``htm``/``htu`` already keep a resource proof off the token endpoint. ``nonces``,
    when given, are the server nonces accepted now; a proof without one of them raises NonceRequired.
    Replay (``jti``) and key binding (``jkt``) are the caller's: see the module docstring.
    """
    jwk, claims = _signed_claims(proof, algorithms)
    if claims.get("htm") != method:
        raise ProofRefused("DPoP proof htm is not the request method")
    htu = claims.get("htu")
    if not isinstance(htu, str) or normalise_htu(htu) != normalise_htu(url):
        raise ProofRefused("DPoP proof htu is not the request URI")
    iat = _check_times(claims, now, window)
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_LENGTH:
        raise ProofRefused("DPoP proof jti is missing or too long")
    if access_token is not None and claims.get("ath") != access_token_hash(access_token):
        raise ProofRefused("DPoP proof ath is not the hash of the access token")
    nonce = claims.get("nonce")
    if not isinstance(nonce, str):
        nonce = None
    if nonces is not None and (nonce is None or nonce not in nonces):
        raise NonceRequired("DPoP proof lacks a current server nonce")
    return Proof(jkt=thumbprint(jwk), jti=jti, iat=iat, nonce=nonce)


def _signed_claims(proof: str, algorithms: Collection[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The proof's public key and claims, once its form, header and signature have passed."""
    if len(proof) > MAX_PROOF_LENGTH:
        raise ProofRefused("DPoP proof is too large")
    if "," in proof:
        # A compact JWS holds no comma: this is two header fields joined (RFC 9110 §5.3), as mitmproxy does.
        raise ProofRefused("more than one DPoP proof")
    if not _COMPACT.fullmatch(proof):
        raise ProofRefused("DPoP proof is not a compact JWS")
    try:
        header = _PROOF_JWS.get_unverified_header(proof)
    except jwt.PyJWTError:
        raise ProofRefused("DPoP proof is unreadable") from None
    typ = header.get("typ")
    # A media type: case-insensitive, and "application/" may be left out (RFC 7515 §4.1.9).
    if not isinstance(typ, str) or typ.lower().removeprefix("application/") != "dpop+jwt":
        raise ProofRefused("DPoP proof typ is not dpop+jwt")
    alg = header.get("alg")
    # The tuple first: a list or dict alg is never hashed against a frozenset allowlist.
    if alg not in ASYMMETRIC_ALGORITHMS or alg not in algorithms:
        raise ProofRefused("DPoP proof algorithm is not allowed")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise ProofRefused("DPoP proof has no jwk header")
    if _PRIVATE_MEMBERS & jwk.keys():
        raise ProofRefused("DPoP proof jwk holds a private key")
    try:
        # The key is read for the header's alg only: a kty or curve of another algorithm is refused.
        payload = _PROOF_JWS.decode(proof, jwt.PyJWK(jwk, algorithm=alg), algorithms=[alg])
    except (jwt.InvalidKeyError, jwt.PyJWKError):
        raise ProofRefused("DPoP proof jwk is not a public key for its algorithm") from None
    except jwt.PyJWTError:
        raise ProofRefused("DPoP proof signature does not verify") from None
    try:
        claims = json.loads(payload)
    except (ValueError, RecursionError):
        claims = None
    if not isinstance(claims, dict):
        raise ProofRefused("DPoP proof claims are not a JSON object")
    return jwk, claims


def _check_times(claims: dict[str, Any], now: float, window: float) -> float:
    """The proof's ``iat``, once it and any ``exp`` and ``nbf`` hold ``now`` within ``window``."""
    iat = claims.get("iat")
    if not _is_number(iat):
        raise ProofRefused("DPoP proof iat is missing or not a number")
    # Compared, not subtracted: an int beyond float range (valid JSON) must not raise OverflowError.
    if not now - window <= iat <= now + window:
        raise ProofRefused("DPoP proof iat is outside the accepted window")
    # RFC 9449 needs neither, but a JWT that has them must not be accepted outside them (RFC 7519 §4.1.4-5).
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if "exp" in claims and not (_is_number(exp) and now - window < exp):
        raise ProofRefused("DPoP proof has expired")
    if "nbf" in claims and not (_is_number(nbf) and nbf <= now + window):
        raise ProofRefused("DPoP proof is not valid yet")
    return iat


def _algorithm_for(private_key: ProofKey) -> str:
    if isinstance(private_key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        curves = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512", "secp256k1": "ES256K"}
        return curves[private_key.curve.name]
    return "EdDSA"


def public_jwk(private_key: ProofKey) -> dict[str, Any]:
    """The public half of a client's key as the ``jwk`` header carries it."""
    algorithm = jwt.get_algorithm_by_name(_algorithm_for(private_key))
    return algorithm.to_jwk(private_key.public_key(), as_dict=True)


def make_proof(
    private_key: ProofKey,
    method: str,
    url: str,
    *,
    access_token: str | None = None,
    nonce: str | None = None,
    iat: float | None = None,
    jti: str | None = None,
    alg: str | None = None,
) -> str:
    """A DPoP proof for a request, as a client makes it (RFC 9449 §4.2). ``alg`` defaults to the key's."""
    target = urlsplit(url)
    claims: dict[str, Any] = {
        "jti": secrets.token_urlsafe(16) if jti is None else jti,
        "htm": method,
        "htu": target._replace(query="", fragment="").geturl(),
        "iat": int(time.time()) if iat is None else iat,
    }
    if access_token is not None:
        claims["ath"] = access_token_hash(access_token)
    if nonce is not None:
        claims["nonce"] = nonce
    headers = {"typ": "dpop+jwt", "jwk": public_jwk(private_key)}
    return jwt.encode(claims, private_key, algorithm=alg or _algorithm_for(private_key), headers=headers)
