"""DPoP proofs (RFC 9449): check one as §4.3 says, and make one (the client's side, for tests and the demo).

Pure: no I/O, no mitmproxy. What needs memory or the store stays with the caller: remembering each accepted
``jti`` (replay, §11.1; key it on the ``jti``, not on the proof's bytes, since an ECDSA signature can be
re-encoded), issuing nonces, and comparing ``Proof.jkt`` with the key a handle is bound to.
"""

from __future__ import annotations

import base64
import hashlib
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

from . import jws
from .errors import NonceRequired, ProofRefused
from .htu import normalise_htu

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

ProofKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey


@dataclass(frozen=True)
class Proof:
    """What an accepted proof tells the caller."""

    jkt: str  # RFC 7638 thumbprint of the proof's key: what a handle is bound to
    jti: str  # to be remembered for the window, so that the proof is used once
    iat: float
    nonce: str | None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


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
    if not jws.is_json_number(iat):
        raise ProofRefused("DPoP proof iat is missing or not a number")
    # Compared, not subtracted: an int beyond float range (valid JSON) must not raise OverflowError.
    if not now - window <= iat <= now + window:
        raise ProofRefused("DPoP proof iat is outside the accepted window")
    # RFC 9449 needs neither, but a JWT that has them must not be accepted outside them (RFC 7519 §4.1.4-5).
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if "exp" in claims and not (jws.is_json_number(exp) and now - window < exp):
        raise ProofRefused("DPoP proof has expired")
    if "nbf" in claims and not (jws.is_json_number(nbf) and nbf <= now + window):
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
