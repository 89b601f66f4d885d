"""dpop.py: every RFC 9449 §4.3 check of a DPoP proof, the htu normalisation, thumbprints, and proofs made
by a real DPoP client library (requests-oauth2client).

Each refusal test names, in its docstring, the check it covers and what happens without it: either the
proof is then accepted, or (where another layer also stands in the way) it is refused for another reason
or raises something other than ProofRefused; the test asserts the reason, so it fails either way. Checks
held by pyjwt rather than by our code say so.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from splittoken import dpop
from splittoken.errors import NonceRequired, ProofRefused

NOW = 1_700_000_000.0
METHOD = "GET"
URL = "https://proxy.example:8443/api/orders?page=2"
HTU = "https://proxy.example:8443/api/orders"
HANDLE = "c2lnbmF0dXJlLW9mLXRoZS1hY2Nlc3MtdG9rZW4"

EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_EC_KEY = ec.generate_private_key(ec.SECP256R1())
P384_KEY = ec.generate_private_key(ec.SECP384R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()
GOOD_KEYS: list[tuple[str, dpop.ProofKey]] = [
    ("ES256", EC_KEY),
    ("ES384", P384_KEY),
    ("ES512", ec.generate_private_key(ec.SECP521R1())),
    ("ES256K", ec.generate_private_key(ec.SECP256K1())),
    ("RS256", RSA_KEY),
    ("RS512", RSA_KEY),
    ("PS256", RSA_KEY),
    ("PS384", RSA_KEY),
    ("EdDSA", ED_KEY),
    ("EdDSA", ed448.Ed448PrivateKey.generate()),
]
DROP = object()  # in forge(): remove this member


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def check(proof: str, **kwargs: Any) -> dpop.Proof:
    return dpop.verify_proof(proof, **{"method": METHOD, "url": URL, "now": NOW, **kwargs})


def good(key: dpop.ProofKey = EC_KEY, **kwargs: Any) -> str:
    return dpop.make_proof(key, METHOD, URL, **{"iat": NOW, **kwargs})


def sign(header: bytes, payload: bytes, key: Any, alg: str, pad: bool = False) -> str:
    """A compact JWS from raw header and payload bytes; ``pad`` keeps base64's "=" padding."""

    def encode(raw: bytes) -> str:
        text = base64.urlsafe_b64encode(raw).decode()
        return text if pad else text.rstrip("=")

    signing_input = f"{encode(header)}.{encode(payload)}"
    signature = jwt.get_algorithm_by_name(alg).sign(signing_input.encode(), key)
    return f"{signing_input}.{encode(signature)}"


def forge(
    header: dict[str, Any] | None = None,
    claims: dict[str, Any] | None = None,
    *,
    key: Any = EC_KEY,
    alg: str = "ES256",
    pad: bool = False,
) -> str:
    """A proof for METHOD URL at NOW with header members and claims replaced (DROP removes one)."""
    full_header = {"typ": "dpop+jwt", "alg": alg, "jwk": dpop.public_jwk(key)} | (header or {})
    full_claims = {"jti": "jti-1", "htm": METHOD, "htu": HTU, "iat": NOW} | (claims or {})
    full_header = {k: v for k, v in full_header.items() if v is not DROP}
    full_claims = {k: v for k, v in full_claims.items() if v is not DROP}
    return sign(json.dumps(full_header).encode(), json.dumps(full_claims).encode(), key, alg, pad)


def refused(proof: str, reason: str, **kwargs: Any) -> ProofRefused:
    with pytest.raises(ProofRefused, match=reason) as info:
        check(proof, **kwargs)
    # The message goes to logs and to error_description: never any part of what the client sent.
    for part in proof.split("."):
        assert len(part) < 8 or part[:8] not in str(info.value)
    return info.value


# -----------------------------------------------------------------------------------------------------------
# Good proofs


@pytest.mark.parametrize(("alg", "key"), GOOD_KEYS, ids=[f"{a}-{type(k).__name__}" for a, k in GOOD_KEYS])
def test_good_proof_is_accepted(alg: str, key: dpop.ProofKey) -> None:
    proof = dpop.make_proof(key, METHOD, URL, iat=NOW, jti="id-1", alg=alg)
    assert check(proof) == dpop.Proof(
        jkt=dpop.thumbprint(dpop.public_jwk(key)), jti="id-1", iat=NOW, nonce=None
    )


def test_good_proof_with_access_token_and_nonce() -> None:
    proof = good(access_token=HANDLE, nonce="n-2")
    accepted = check(proof, access_token=HANDLE, nonces=("n-1", "n-2"))
    assert accepted.nonce == "n-2"
    assert accepted.jkt == dpop.thumbprint(dpop.public_jwk(EC_KEY))


def test_make_proof_defaults_are_fresh_and_unique() -> None:
    first, second = (dpop.make_proof(EC_KEY, "POST", "https://as.example/token#frag") for _ in range(2))
    claims = jwt.decode(first, options={"verify_signature": False})
    assert claims["htu"] == "https://as.example/token"
    assert jwt.get_unverified_header(first)["typ"] == "dpop+jwt"
    assert len(claims["jti"]) >= 16
    assert check(first, method="POST", url="https://as.example/token", now=claims["iat"]).jti == claims["jti"]
    assert (
        check(second, method="POST", url="https://as.example/token", now=claims["iat"]).jti != claims["jti"]
    )


def test_same_key_same_thumbprint_other_key_other_thumbprint() -> None:
    assert check(good()).jkt == check(good(jti="another")).jkt
    assert check(good(OTHER_EC_KEY)).jkt != check(good()).jkt


# -----------------------------------------------------------------------------------------------------------
# Thumbprint and ath: the RFCs' own examples


def test_thumbprint_rfc7638_example() -> None:
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
        "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAt"
        "aSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ"
        "-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert dpop.thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_thumbprint_rfc8037_example() -> None:
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "use": "sig"}
    assert dpop.thumbprint(jwk) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_thumbprint_of_an_ec_key_covers_the_required_members_in_order() -> None:
    jwk = dpop.public_jwk(EC_KEY)
    canonical = '{"crv":"P-256","kty":"EC","x":"%s","y":"%s"}' % (jwk["x"], jwk["y"])  # noqa: UP031
    assert dpop.thumbprint({**jwk, "kid": "k1", "use": "sig"}) == b64(
        hashlib.sha256(canonical.encode()).digest()
    )


@pytest.mark.parametrize(
    "jwk", [{"kty": "oct", "k": "c2VjcmV0"}, {"kty": "EC", "crv": "P-256"}, {}, {"kty": []}]
)
def test_thumbprint_refuses_what_is_not_a_known_public_key(jwk: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="not a public JWK"):
        dpop.thumbprint(jwk)


def test_thumbprint_hashes_the_utf8_json() -> None:
    jwk = {"kty": "OKP", "crv": "Ed\u00e9", "x": "AA"}
    canonical = '{"crv":"Ed\u00e9","kty":"OKP","x":"AA"}'.encode()
    assert dpop.thumbprint(jwk) == b64(hashlib.sha256(canonical).digest())


def test_access_token_hash_rfc9449_example() -> None:
    assert dpop.access_token_hash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU") == (
        "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
    )


# -----------------------------------------------------------------------------------------------------------
# Shape and size


def test_oversized_proof_is_refused_before_parsing() -> None:
    """Size bound. Without it the padded but valid proof is accepted; the junk megabyte is not parsed."""
    padded = forge(claims={"pad": "x" * dpop.MAX_PROOF_LENGTH})
    refused(padded, "too large")
    refused("e" * 1_000_000, "too large")
    assert check(forge(claims={"pad": "x" * 4000})).jti == "jti-1"


def test_two_proof_headers_are_refused() -> None:
    """Exactly one proof. Without the check the joined value is refused as "not a compact JWS" instead."""
    refused(f"{good()}, {good(jti='jti-2')}", "more than one DPoP proof")
    refused(f"{good()},", "more than one DPoP proof")


def test_padded_segments_are_refused() -> None:
    """Compact JWS shape (unpadded base64url, RFC 7515 §2). Without it pyjwt accepts the padded proof."""
    proof = forge(pad=True)
    assert "=" in proof
    refused(proof, "not a compact JWS")


@pytest.mark.parametrize(
    "proof",
    [
        "",
        "a.b",
        "a.b.c.d",
        "a.b.c.d.e",
        "a..c",
        "a.b.",
        ".b.c",
        "a.b.c ",
        " a.b.c",
        "a.b.c\n",
        "a+b.c.d",
        "ä.b.c",
    ],
)
def test_what_is_not_three_base64url_segments_is_refused(proof: str) -> None:
    """Compact JWS shape. Without it these reach pyjwt, which refuses them as unreadable instead."""
    refused(proof, "not a compact JWS")


@pytest.mark.parametrize(
    "header",
    [b"not json", b"[1, 2]", b'"dpop+jwt"', b"[" * 3000, b'{"typ": "dpop+jwt", "kid": 7}', b"\xff\xfe"],
)
def test_unreadable_header_is_refused(header: bytes) -> None:
    """Header parsing (pyjwt). Without the except clause pyjwt's DecodeError escapes."""
    refused(sign(header, b'{"htm": "GET"}', EC_KEY, "ES256"), "proof is unreadable")


@pytest.mark.parametrize(
    "extra",
    [
        {"crit": ["urn:example:unknown"]},  # an extension the verifier does not understand (RFC 7515 §4.1.11)
        {"crit": ["b64"], "b64": False},  # RFC 7797: detached payload, and our payload segment is not empty
        {"crit": []},
    ],
)
def test_critical_header_parameters_are_refused(extra: dict[str, Any]) -> None:
    """Held by pyjwt (its crit and b64 handling), not by a check of ours: documents that it holds."""
    refused(forge(extra), "proof is unreadable")


# -----------------------------------------------------------------------------------------------------------
# typ, alg, jwk


@pytest.mark.parametrize("typ", ["JWT", "at+jwt", "dpop", "dpop+jwt ", DROP, None, 1, ["dpop+jwt"]])
def test_typ_other_than_dpop_jwt_is_refused(typ: object) -> None:
    """typ is dpop+jwt (explicit typing, RFC 8725 §3.11). Without the check each of these is accepted."""
    refused(forge({"typ": typ}), "typ is not dpop\\+jwt")


@pytest.mark.parametrize("typ", ["DPoP+JWT", "application/dpop+jwt", "Application/DPOP+jwt"])
def test_typ_is_a_case_insensitive_media_type(typ: str) -> None:
    assert check(forge({"typ": typ})).jti == "jti-1"


def test_algorithm_outside_the_callers_allowlist_is_refused() -> None:
    """alg in the configured allowlist. Without the check the ES256 proof is accepted."""
    refused(good(), "algorithm is not allowed", algorithms=("RS256", "PS256"))
    assert check(good(RSA_KEY), algorithms=("RS256", "PS256")).jti


def test_none_is_refused_even_when_the_caller_allows_it() -> None:
    """alg asymmetric, whatever the caller allows. Without the check pyjwt's NoneAlgorithm raises
    NotImplementedError reading the key (a crash, not a refusal)."""
    header = {"typ": "dpop+jwt", "alg": "none", "jwk": dpop.public_jwk(EC_KEY)}
    unsigned = f"{b64(json.dumps(header).encode())}.{b64(b'{}')}.{b64(b'x')}"
    refused(unsigned, "algorithm is not allowed", algorithms=("none", "ES256"))


def test_hmac_is_refused_even_when_the_caller_allows_it() -> None:
    """alg asymmetric, whatever the caller allows. Without the check this HS256 proof is still refused, as
    its jwk holds the secret "k": the test then fails on the reason."""
    secret = b"s" * 32
    header = {"typ": "dpop+jwt", "alg": "HS256", "jwk": {"kty": "oct", "k": b64(secret)}}
    claims = {"jti": "j", "htm": METHOD, "htu": HTU, "iat": NOW}
    proof = sign(json.dumps(header).encode(), json.dumps(claims).encode(), secret, "HS256")
    refused(proof, "algorithm is not allowed", algorithms=("HS256", "ES256"))


@pytest.mark.parametrize("alg", [DROP, None, "", "ES256 ", "es256", "ES521", 256, ["ES256"], {"a": 1}])
def test_malformed_algorithm_is_refused(alg: object) -> None:
    """alg in the allowlist, checked against our tuple of asymmetric algorithms first. With the order
    reversed, the list or dict raises TypeError (unhashable) against a frozenset allowlist."""
    refused(forge({"alg": alg}), "algorithm is not allowed", algorithms=frozenset(dpop.ASYMMETRIC_ALGORITHMS))


@pytest.mark.parametrize("jwk", [DROP, None, "eyJrdHkiOiJFQyJ9", ["EC"], 1])
def test_missing_jwk_is_refused(jwk: object) -> None:
    """jwk header present, an object. Without the check pyjwt's PyJWK raises AttributeError (a crash)."""
    refused(forge({"jwk": jwk}), "no jwk header")


@pytest.mark.parametrize(
    ("key", "alg", "member"),
    [
        (EC_KEY, "ES256", "d"),
        (ED_KEY, "EdDSA", "d"),
        (RSA_KEY, "RS256", "d"),
        *((EC_KEY, "ES256", member) for member in ("p", "q", "dp", "dq", "qi", "oth", "k")),
    ],
)
def test_private_key_in_jwk_is_refused(key: Any, alg: str, member: str) -> None:
    """jwk holds no private member. Without the check the EC and Ed25519 proofs with their real "d", and
    the EC proofs with any other private member beside the public key, are accepted (pyjwt verifies with
    a private key's public half); the RSA one crashes in pyjwt."""
    jwk = dict(dpop.public_jwk(key))
    if member == "d":
        private = jwt.get_algorithm_by_name(alg).to_jwk(key, as_dict=True)
        jwk.update({name: private[name] for name in ("d", "p", "q", "dp", "dq", "qi") if name in private})
    else:
        jwk[member] = b64(b"junk")
    refused(forge({"jwk": jwk}, key=key, alg=alg), "jwk holds a private key")


@pytest.mark.parametrize(
    ("alg", "jwk_key", "signing_alg"),
    [
        ("ES256", RSA_KEY, "ES256"),  # RSA jwk under an EC algorithm
        ("ES256", P384_KEY, "ES256"),  # P-384 jwk under ES256 (P-256 only)
        ("EdDSA", EC_KEY, "EdDSA"),
        ("RS256", EC_KEY, "RS256"),
    ],
)
def test_jwk_of_another_kty_or_curve_than_alg_is_refused(alg: str, jwk_key: Any, signing_alg: str) -> None:
    """kty/curve match alg: held by pyjwt (PyJWK reads the key for the given alg, and pyjwt refuses an alg
    other than the key's). Without ``algorithm=alg`` our test fails on the reason: pyjwt then refuses the
    header alg as not the key's, reported as a bad signature."""
    signer = {"ES256": EC_KEY, "EdDSA": ED_KEY, "RS256": RSA_KEY}[signing_alg]
    proof = forge({"jwk": dpop.public_jwk(jwk_key)}, key=signer, alg=alg)
    refused(proof, "not a public key for its algorithm")


def test_short_rsa_key_is_refused() -> None:
    """RSA keys of 2048 bits or more (pyjwt's enforce_minimum_key_length). Without it the 1024-bit proof is
    accepted, with a warning."""
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.warns(jwt.warnings.InsecureKeyLengthWarning):
        proof = good(short)
    refused(proof, "not a public key for its algorithm")


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
        {"kty": "EC", "crv": "P-256", "x": 1, "y": 2},
        {"kty": "EC", "crv": "P-999", "x": "AAAA", "y": "AAAA"},
        {"kty": "EC"},
        {},
    ],
)
def test_jwk_that_is_no_key_is_refused(jwk: dict[str, Any]) -> None:
    """The jwk is a usable key. Without the except clause pyjwt's InvalidKeyError escapes."""
    refused(forge({"jwk": jwk}), "not a public key for its algorithm")


# -----------------------------------------------------------------------------------------------------------
# Signature


def test_tampered_claims_are_refused() -> None:
    """The signature verifies with the jwk. Without verification the proof with swapped claims is accepted."""
    header, _, signature = good().split(".")
    claims = {"jti": "jti-9", "htm": "DELETE", "htu": HTU, "iat": NOW}
    tampered = f"{header}.{b64(json.dumps(claims).encode())}.{signature}"
    refused(tampered, "signature does not verify", method="DELETE")


def test_proof_signed_by_another_key_than_its_jwk_is_refused() -> None:
    """The signature verifies with the jwk. Without verification the thief's proof, carrying the victim's
    public key (so the victim's jkt) but signed with the thief's key, is accepted."""
    refused(forge({"jwk": dpop.public_jwk(EC_KEY)}, key=OTHER_EC_KEY), "signature does not verify")


def test_signature_of_another_proof_is_refused() -> None:
    """The signature verifies. Without verification a proof carrying another proof's signature is accepted."""
    signing_input = good().rpartition(".")[0]
    refused(f"{signing_input}.{good(jti='other').rpartition('.')[2]}", "signature does not verify")


def test_non_canonical_base64url_is_refused() -> None:
    """Held by pyjwt: a segment with stray trailing bits is not the one that was signed."""
    refused(good()[:-1], "unreadable")


# -----------------------------------------------------------------------------------------------------------
# Claims


@pytest.mark.parametrize("payload", [b"[1]", b'"x"', b"null", b"{", b"[" * 5000, b"\xff"])
def test_claims_that_are_not_a_json_object_are_refused(payload: bytes) -> None:
    """Claims are a JSON object. Without the parse guard json's error escapes; without the isinstance check
    ``claims.get`` raises AttributeError."""
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": dpop.public_jwk(EC_KEY)}
    refused(sign(json.dumps(header).encode(), payload, EC_KEY, "ES256"), "not a JSON object")


@pytest.mark.parametrize("htm", ["POST", "get", " GET", DROP, None, ["GET"]])
def test_htm_other_than_the_method_is_refused(htm: object) -> None:
    """htm is the request's method, case-sensitively (RFC 9110 §9.1). Without the check each is accepted."""
    refused(forge(claims={"htm": htm}), "htm is not the request method")


@pytest.mark.parametrize(
    "htu",
    [
        "https://proxy.example:8443/api/other",
        "https://proxy.example:8443/api/orders/",
        "https://proxy.example:8443/API/orders",
        "https://proxy.example/api/orders",  # default port: another origin than :8443
        "http://proxy.example:8443/api/orders",
        "https://upstream.internal:8443/api/orders",  # where reverse mode forwards, not what the client used
        "https://proxy.example:8443/api%2Forders",  # an encoded "/" is not a "/"
        "https://proxy.example:8443/api/orders/..",
        "/api/orders",
    ],
)
def test_htu_other_than_the_request_uri_is_refused(htu: str) -> None:
    """htu is the request's URI. Without the check each of these is accepted."""
    refused(forge(claims={"htu": htu}), "htu")


@pytest.mark.parametrize("htu", [DROP, None, 443, ["https://proxy.example:8443/api/orders"]])
def test_htu_that_is_no_string_is_refused(htu: object) -> None:
    """htu is a string. Without the isinstance check normalise_htu raises TypeError (a crash)."""
    refused(forge(claims={"htu": htu}), "htu is not the request URI")


@pytest.mark.parametrize(
    ("htu", "url"),
    [
        ("HTTPS://Proxy.EXAMPLE:8443/api/orders", URL),  # scheme and host are case-insensitive
        ("https://proxy.example:8443/api/%6Frders", URL),  # an encoded unreserved character
        ("https://proxy.example:8443/api/./x/../orders", URL),  # dot segments
        ("https://proxy.example:8443/api/orders?other=1#frag", URL),  # query and fragment ignored
        ("https://proxy.example:443/token", "https://proxy.example/token"),  # default port
        ("http://proxy.example:80/token", "http://proxy.example/token"),
        ("https://proxy.example:/token", "https://proxy.example/token"),  # empty port
        ("https://proxy.example", "https://proxy.example/"),  # empty path
        ("https://proxy.example/a%2fb", "https://proxy.example/a%2Fb"),  # case of percent-encoding
        ("https://[0:0::1]:8443/t", "https://[::1]:8443/t"),
    ],
)
def test_htu_is_compared_after_normalisation(htu: str, url: str) -> None:
    """RFC 9449 §4.3 asks for RFC 3986 §6.2.2 and §6.2.3 normalisation of htu. Without normalise_htu (a
    plain comparison) each of these equivalent URIs is refused."""
    assert check(forge(claims={"htu": htu}), url=url).jti == "jti-1"


@pytest.mark.parametrize("iat", [NOW - 61, NOW + 61, NOW - 3600, 0, 10**400])
def test_iat_outside_the_window_is_refused(iat: float) -> None:
    """iat within ±window of now. Without the check each is accepted."""
    refused(forge(claims={"iat": iat}), "outside the accepted window")


@pytest.mark.parametrize("iat", [float("nan"), float("inf"), float("-inf")])
def test_iat_that_is_no_finite_number_is_refused(iat: float) -> None:
    """Python's JSON reader takes NaN and Infinity, which no JSON number is; a NaN compares false both ways,
    so without the number check it would pass the window check."""
    refused(forge(claims={"iat": iat}), "iat is missing or not a number")


@pytest.mark.parametrize("iat", [NOW - 60, NOW + 60, NOW + 0.5, int(NOW)])
def test_iat_inside_the_window_is_accepted(iat: float) -> None:
    assert check(forge(claims={"iat": iat})).iat == iat


def test_window_is_configurable() -> None:
    """The window is the caller's. Without the parameter the 300 s old proof is refused."""
    old = forge(claims={"iat": NOW - 300})
    assert check(old, window=301).iat == NOW - 300
    refused(old, "outside the accepted window", window=299)


@pytest.mark.parametrize("iat", [DROP, None, "1700000000", True, [NOW]])
def test_iat_that_is_no_number_is_refused(iat: object) -> None:
    """iat present and a number, not a bool. Without the check: None, the string and the list raise
    TypeError in the window comparison; True (1) is refused as outside the window."""
    refused(forge(claims={"iat": iat}), "iat is missing or not a number")


@pytest.mark.parametrize("exp", [NOW - 61, "later", True, None])
def test_expired_proof_is_refused(exp: object) -> None:
    """exp, when present, not passed (RFC 7519 §4.1.4). Without the check each is accepted."""
    refused(forge(claims={"exp": exp}), "has expired")


@pytest.mark.parametrize("nbf", [NOW + 61, "soon", False, [], None])
def test_proof_not_valid_yet_is_refused(nbf: object) -> None:
    """nbf, when present, reached (RFC 7519 §4.1.5). Without the check each is accepted."""
    refused(forge(claims={"nbf": nbf}), "not valid yet")


def test_exp_and_nbf_inside_the_window_are_accepted() -> None:
    assert check(forge(claims={"exp": NOW - 59, "nbf": NOW + 59})).jti == "jti-1"


@pytest.mark.parametrize("jti", [DROP, None, "", 12345, ["a"], "j" * (dpop.MAX_JTI_LENGTH + 1)])
def test_jti_missing_or_malformed_is_refused(jti: object) -> None:
    """jti present, a non-empty string of bounded length. Without the check each is accepted, and the
    caller would store whatever it is."""
    refused(forge(claims={"jti": jti}), "jti is missing or too long")


def test_jti_of_the_maximum_length_is_accepted() -> None:
    assert check(forge(claims={"jti": "j" * dpop.MAX_JTI_LENGTH})).jti == "j" * dpop.MAX_JTI_LENGTH


@pytest.mark.parametrize(
    "ath",
    [DROP, None, dpop.access_token_hash("another handle"), dpop.access_token_hash(HANDLE)[:-1], HANDLE],
)
def test_ath_other_than_the_access_token_hash_is_refused(ath: object) -> None:
    """ath is base64url(SHA-256(access token)) when an access token is presented. Without the check each
    is accepted: a proof seen beside one handle would serve for another."""
    refused(forge(claims={"ath": ath}), "ath is not the hash", access_token=HANDLE)


def test_ath_is_ignored_without_an_access_token() -> None:
    """At the token endpoint no access token is presented: an ath is an unknown claim there (RFC 7519 §4)."""
    assert check(good(access_token=HANDLE)).jti


@pytest.mark.parametrize("nonce", [DROP, None, "stale", "", 7, ["n-1"]])
def test_proof_without_a_current_nonce_is_refused(nonce: object) -> None:
    """nonce is one the server accepts now (RFC 9449 §8). Without the check each is accepted."""
    error = refused(forge(claims={"nonce": nonce}), "lacks a current server nonce", nonces={"n-1", "n-0"})
    assert isinstance(error, NonceRequired)
    assert error.error == "use_dpop_nonce"


def test_empty_nonce_set_refuses_every_proof() -> None:
    """An empty set of current nonces fails closed: it never means "no nonce needed"."""
    refused(good(nonce="n-1"), "lacks a current server nonce", nonces=())


def test_nonce_is_reported_when_not_demanded() -> None:
    assert check(good(nonce="n-1")).nonce == "n-1"
    assert check(forge(claims={"nonce": 5})).nonce is None


def test_other_refusals_are_invalid_dpop_proof() -> None:
    assert refused(good(), "htm", method="POST").error == "invalid_dpop_proof"


def test_refusal_messages_never_echo_client_values() -> None:
    """error_description goes into a quoted WWW-Authenticate parameter: nothing the client chose, such as
    a quote, a line break or a token, may reach it."""
    nasty = 'x", error="injected\r\nSet-Cookie: a=b'
    for header, claims in [
        ({"alg": nasty}, {}),
        ({"typ": nasty}, {}),
        ({}, {"htm": nasty}),
        ({}, {"htu": nasty}),
    ]:
        with pytest.raises(ProofRefused) as info:
            check(forge(header, claims))
        assert all(c not in str(info.value) for c in '"\r\n=') and "injected" not in str(info.value)


# -----------------------------------------------------------------------------------------------------------
# A real DPoP client library: requests-oauth2client (jwskate underneath, its own JWK and thumbprint code)


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512", "RS256", "PS256", "EdDSA"])
def test_requests_oauth2client_token_request_proof_is_accepted(alg: str) -> None:
    from requests_oauth2client import DPoPKey

    key = DPoPKey.generate(alg=alg)
    token_endpoint = "https://proxy.example:8443/realms/demo/protocol/openid-connect/token"
    proof = str(key.proof(htm="POST", htu=token_endpoint, nonce="n-1"))
    accepted = dpop.verify_proof(
        proof, method="POST", url=token_endpoint, now=key.iat_generator(), nonces={"n-1"}
    )
    assert accepted.jkt == key.dpop_jkt  # jwskate's own RFC 7638 thumbprint agrees with ours
    assert accepted.nonce == "n-1"


def test_requests_oauth2client_api_call_proof_is_accepted() -> None:
    """The way the library's DPoPToken authenticates a requests call: Authorization: DPoP <handle>, and a
    proof whose ath its own code computed from the handle."""
    import requests
    from requests_oauth2client import DPoPKey, DPoPToken

    key = DPoPKey.generate()
    token = DPoPToken(access_token=HANDLE, _dpop_key=key)
    request = token(requests.Request("PATCH", URL, json={"a": 1}).prepare())
    assert request.headers["Authorization"] == f"DPoP {HANDLE}"
    accepted = dpop.verify_proof(
        request.headers["DPoP"], method="PATCH", url=URL, now=key.iat_generator(), access_token=HANDLE
    )
    assert accepted.jkt == key.dpop_jkt
    with pytest.raises(ProofRefused, match="ath"):
        dpop.verify_proof(
            request.headers["DPoP"], method="PATCH", url=URL, now=key.iat_generator(), access_token="stolen"
        )


# -----------------------------------------------------------------------------------------------------------
# Fuzzing: junk never crashes verify_proof and is never accepted

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.text(alphabet=_B64URL + ".=, ", max_size=300))
def test_fuzz_header_value_junk_is_refused(value: str) -> None:
    with pytest.raises(ProofRefused):
        check(value)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=200), st.binary(max_size=80))
def test_fuzz_segments_of_random_bytes_are_refused(header: bytes, payload: bytes, signature: bytes) -> None:
    with pytest.raises(ProofRefused):
        check(f"{b64(header)}.{b64(payload)}.{b64(signature)}")


_PUBLIC = dpop.public_jwk(EC_KEY)
_jwk_junk = st.one_of(
    _json_values,
    st.fixed_dictionaries({}, optional={name: _json_values for name in ("kty", "crv", "x", "y", "n", "e")}),
    st.fixed_dictionaries(
        {"kty": st.sampled_from(["EC", "RSA", "OKP", "oct"])},
        optional={"crv": st.sampled_from(["P-256", "P-384", "Ed25519", "X25519"]) | _json_values}
        | {
            name: st.text(alphabet=_B64URL, max_size=90) | _json_values
            for name in ("x", "y", "n", "e", "d", "k")
        },
    ),
    st.dictionaries(st.sampled_from(["d", "k", "oth", "kid", "use"]), _json_values, max_size=2).map(
        lambda extra: {**_PUBLIC, **extra}
    ),
    st.just(_PUBLIC),
)
_header_junk = st.fixed_dictionaries(
    {},
    optional={
        "typ": st.sampled_from(["dpop+jwt", "JWT", "application/dpop+jwt"]) | _json_values,
        "alg": st.sampled_from([*dpop.ASYMMETRIC_ALGORITHMS, "none", "HS256", "ES521"]) | _json_values,
        "jwk": _jwk_junk,
        "crit": _json_values,
        "b64": _json_values,
        "kid": _json_values,
        "x5c": _json_values,
    },
)


def _sound_header(header: dict[str, Any]) -> bool:
    """Independent of verify_proof: what a header signed with EC_KEY needs to be accepted."""
    jwk = header.get("jwk")
    return (
        isinstance(header.get("typ"), str)
        and header["typ"].lower().removeprefix("application/") == "dpop+jwt"
        and header.get("alg") == "ES256"
        and isinstance(jwk, dict)
        and all(jwk.get(name) == _PUBLIC[name] for name in ("kty", "crv", "x", "y"))
        and not {"d", "k", "oth"} & jwk.keys()
        and "crit" not in header
        and header.get("b64", True) is not False
        and isinstance(header.get("kid", ""), str)
    )


@settings(max_examples=400, deadline=None)
@given(_header_junk)
def test_fuzz_jose_header_is_refused_unless_sound(header: dict[str, Any]) -> None:
    """Structured junk in the JOSE header of a proof signed with a real key: never a crash, and accepted
    only when the header is one a correct verifier accepts, with the signer's thumbprint."""
    claims = {"jti": "jti-1", "htm": METHOD, "htu": HTU, "iat": NOW}
    proof = sign(json.dumps(header).encode(), json.dumps(claims).encode(), EC_KEY, "ES256")
    try:
        accepted = check(proof)
    except ProofRefused:
        return
    assert _sound_header(header), header
    assert accepted.jkt == dpop.thumbprint(_PUBLIC)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["jti", "htm", "htu", "iat", "exp", "nbf", "ath", "nonce"]), _json_values)
)
def test_fuzz_claims_are_refused_unless_sound(claims: dict[str, Any]) -> None:
    """Structured junk in the claims of a properly signed proof: never a crash, never accepted."""
    with pytest.raises(ProofRefused):
        check(
            forge(claims={"jti": DROP, "htm": DROP, "htu": DROP, "iat": DROP, **claims}), access_token=HANDLE
        )
