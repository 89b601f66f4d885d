"""The demo identity provider's cryptography: its signing keys, PKCE, JWK thumbprints and its DPoP proof
check (RFC 9449), done with pyjwt as an identity provider would, independently of the proxy's own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Sequence
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from idp_model import JSONDict, OAuthError

# RFC 9449 §4.3: asymmetric algorithms only; never "none", never a MAC.
DPOP_ALGORITHMS = ("ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "RS256", "RS384", "RS512", "EdDSA")
DPOP_IAT_WINDOW = 60  # seconds a proof's iat may be off from now, either way
# RFC 7638 §3.2: the members a thumbprint hashes, by key type.
THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "k"})


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 §4.2 S256: the code_challenge a code_verifier answers."""
    return b64url(hashlib.sha256(verifier.encode()).digest())


def jwk_thumbprint(jwk: JSONDict) -> str:
    """RFC 7638 thumbprint of a public JWK. KeyError for a key type it does not know or a member missing."""
    members = {name: jwk[name] for name in THUMBPRINT_MEMBERS[jwk["kty"]]}
    if not all(isinstance(value, str) for value in members.values()):
        raise KeyError("thumbprint members are strings")
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


# --- DPoP -----------------------------------------------------------------------------------------------


def invalid_dpop(description: str) -> OAuthError:
    return OAuthError(400, "invalid_dpop_proof", description)


def dpop_thumbprint(proofs: Sequence[str], method: str, path: str, now: float) -> str:
    """The RFC 7638 thumbprint of the key one DPoP proof (RFC 9449 §4.3) is signed with; OAuthError
    invalid_dpop_proof when it does not verify.

    Only the checks that make a proof a proof (typ, an asymmetric algorithm, a public jwk, the signature,
    htm, iat): this is the identity provider's minimal check, the proxy's is the thorough one. htu is judged
    by its path: behind a reverse proxy the identity provider cannot know which host the client addressed.
    No jti replay cache either."""
    if len(proofs) != 1:
        raise invalid_dpop("exactly one DPoP header")
    try:
        header = jwt.get_unverified_header(proofs[0])
        jwk = header.get("jwk")
        if header.get("typ") != "dpop+jwt":
            raise invalid_dpop("typ must be dpop+jwt")
        if header.get("alg") not in DPOP_ALGORITHMS:
            raise invalid_dpop(f"alg must be one of {', '.join(DPOP_ALGORITHMS)}")
        if not isinstance(jwk, dict) or PRIVATE_MEMBERS & jwk.keys():
            raise invalid_dpop("jwk must be a public key")
        key = jwt.PyJWK(jwk, header["alg"])
        claims = jwt.decode(
            proofs[0], key, algorithms=[header["alg"]], leeway=DPOP_IAT_WINDOW,
            options={"require": ["iat", "jti", "htm", "htu"], "verify_aud": False},
        )  # fmt: skip
        thumbprint = jwk_thumbprint(jwk)
    except (jwt.PyJWTError, KeyError, TypeError, ValueError) as exc:
        raise invalid_dpop(f"DPoP proof does not verify: {exc}") from None
    if claims["htm"] != method or not isinstance(claims["htu"], str) or urlsplit(claims["htu"]).path != path:
        raise invalid_dpop("htm or htu does not match the request")
    if not isinstance(claims["iat"], int | float) or abs(now - claims["iat"]) > DPOP_IAT_WINDOW:
        raise invalid_dpop("iat is too far from now")
    return thumbprint


# --- signing --------------------------------------------------------------------------------------------


class Keys:
    """The RS256 key that signs access and ID tokens, and the secret of the HS256 refresh tokens (both
    Keycloak's defaults)."""

    def __init__(self) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.jwk: JSONDict = dict(RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True))
        self.kid = jwk_thumbprint(self.jwk)  # a stable kid for the key, as many identity providers use
        self.jwk.pop("key_ops", None)  # RFC 7517 §4.3: not together with "use", which Keycloak sends
        self.jwk.update(kid=self.kid, use="sig", alg="RS256")
        self.refresh_secret = secrets.token_bytes(32)

    def sign(self, claims: JSONDict) -> str:
        return jwt.encode(claims, self.private, algorithm="RS256", headers={"kid": self.kid, "typ": "JWT"})

    def sign_refresh(self, claims: JSONDict) -> str:
        return jwt.encode(claims, self.refresh_secret, algorithm="HS256")

    def access_claims(self, token: str, verify_exp: bool = True) -> JSONDict | None:
        """The claims of an access token this key signed, or None."""
        try:
            claims = jwt.decode(
                token,
                self.private.public_key(),
                algorithms=["RS256"],
                audience="account",
                options={"verify_exp": verify_exp, "require": ["exp", "jti", "sub"]},
            )
        except jwt.InvalidTokenError:
            return None
        return claims if claims.get("typ") == "Bearer" else None  # an id_token is not an access token

    def refresh_claims(self, token: str, verify_exp: bool = True) -> JSONDict:
        """The claims of a refresh token this secret signed; jwt.InvalidTokenError otherwise."""
        # aud is the issuer URL, which depends on the Host the client used: not worth checking here.
        options = {"verify_exp": verify_exp, "verify_aud": False, "require": ["exp", "jti", "sub"]}
        claims = jwt.decode(token, self.refresh_secret, algorithms=["HS256"], options=options)
        if claims.get("typ") != "Refresh":
            raise jwt.InvalidTokenError("not a refresh token")
        return claims
