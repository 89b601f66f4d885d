"""policy.py: what a request presents, client authentication, lifetimes, and the RFC error answers."""

from __future__ import annotations

import base64
import json
import re
import urllib.parse

import jwt
import pytest

from splittoken import policy
from splittoken.policy import Presented, Refusal

HANDLE = "dGhpcy1pcy1hLXNpZ25hdHVyZS1oYW5kbGUtb2YtNDMtY2hhcnMx"
JWT = jwt.encode({"sub": "alice", "exp": 1_800_000_000}, b"k" * 32, algorithm="HS256")

# RFC 6750 §3: auth-param values are quoted-strings; error_description holds %x20-21 / %x23-5B / %x5D-7E.
_CHALLENGE = re.compile(
    r'Bearer realm="splittoken"'
    r'(, error="[a-z_]+", error_description="[\x20\x21\x23-\x5b\x5d-\x7e]*")?'
)


def challenge(refusal: Refusal) -> str:
    values = [v for k, v in refusal.headers if k.lower() == "www-authenticate"]
    assert len(values) == 1
    return values[0]


def refused(result: Presented | Refusal, status: int, error: str | None) -> Refusal:
    assert isinstance(result, Refusal), result
    assert result.status == status
    assert result.error == error
    body = json.loads(result.body())
    if error:
        assert body["error"] == error
    else:
        assert "error" not in body
    assert isinstance(body["error_description"], str)
    return result


# -----------------------------------------------------------------------------------------------------------
# read_authorization


@pytest.mark.parametrize(
    "value",
    [
        f"Bearer {HANDLE}",
        f"bearer {HANDLE}",
        f"BEARER {HANDLE}",
        f"bEaReR {HANDLE}",
        f"Bearer   {HANDLE}",
        f"Bearer {HANDLE}  ",
        f"  Bearer {HANDLE}",
        f"\tBearer {HANDLE}\t",
        HANDLE,
        f" {HANDLE} ",
    ],
)
def test_read_authorization_handle(value: str) -> None:
    assert policy.read_authorization([value]) == Presented(HANDLE, is_jwt=False)


@pytest.mark.parametrize("value", [f"Bearer {JWT}", f"bearer {JWT}", JWT])
def test_read_authorization_full_jwt(value: str) -> None:
    assert policy.read_authorization([value]) == Presented(JWT, is_jwt=True)


def test_read_authorization_no_credentials_is_a_challenge_without_error() -> None:
    r = refused(policy.read_authorization([]), 401, None)
    assert challenge(r) == 'Bearer realm="splittoken"'
    assert "error" not in challenge(r)  # RFC 6750 §3.1


def test_read_authorization_several_headers() -> None:
    r = refused(policy.read_authorization([f"Bearer {HANDLE}", f"Bearer {HANDLE}"]), 400, "invalid_request")
    assert _CHALLENGE.fullmatch(challenge(r))
    refused(policy.read_authorization(["", ""]), 400, "invalid_request")


@pytest.mark.parametrize("value", ["", " ", "\t", " \t ", "Bearer", "bearer ", " BEARER  "])
def test_read_authorization_empty(value: str) -> None:
    refused(policy.read_authorization([value]), 400, "invalid_request")


@pytest.mark.parametrize(
    "value",
    [
        "Basic YWxpY2U6c2VjcmV0",
        f"DPoP {HANDLE}",
        f"MAC {HANDLE}",
        f"Token {HANDLE}",
        f"Bearer {HANDLE} extra",
        f"Bearer\t{HANDLE}",
        f"Bearer {HANDLE}\tx",
        f"Bearer {HANDLE}, Bearer {HANDLE}",
        'Digest username="a", realm="b"',
    ],
)
def test_read_authorization_unknown_scheme(value: str) -> None:
    r = refused(policy.read_authorization([value]), 400, "invalid_request")
    assert _CHALLENGE.fullmatch(challenge(r))


@pytest.mark.parametrize(
    "value",
    [
        "Bearer abc+def",
        "Bearer abc/def",
        "Bearer abc=",
        "Bearer abc~def",
        "Bearer a.b",
        "Bearer a.b.c",  # dotted, but not a JWS
        "Bearer ünïcode",
        "Bearer \x00abc",
        "abc\x0bdef",
        "abc\rdef",
        "Bearer " + "a" * (policy.MAX_HANDLE_LENGTH + 1),
        "Bearer " + "a" * 1_000_000,
        "Bearer " + JWT + "x" * 20_000,
        "Bearer é" + HANDLE,
    ],
)
def test_read_authorization_malformed_credential(value: str) -> None:
    refused(policy.read_authorization([value]), 400, "invalid_request")


def test_read_authorization_takes_a_client_jwt_with_a_large_claim_set() -> None:
    large = jwt.encode({"sub": "alice", "pad": "x" * 30_000}, "s" * 32, algorithm="HS256")
    assert policy.read_authorization([f"Bearer {large}"]) == Presented(large, is_jwt=True)


def test_read_authorization_longest_handle() -> None:
    handle = "A" * policy.MAX_HANDLE_LENGTH
    assert policy.read_authorization([f"Bearer {handle}"]) == Presented(handle, is_jwt=False)


# -----------------------------------------------------------------------------------------------------------
# Error answers


HOSTILE = [
    'evil" , error="none',
    "back\\slash",
    "new\r\nline: injected",
    "tab\there\x00nul\x7fdel",
    "unicode ünïcode … \u2028 \ud800",
    "",
    '"' * 50,
]


@pytest.mark.parametrize("description", HOSTILE)
@pytest.mark.parametrize("make", [policy.invalid_token, policy.invalid_request])
def test_challenge_is_well_formed_whatever_the_description(make: object, description: str) -> None:
    r = make(description)  # type: ignore[operator]
    value = challenge(r)
    assert _CHALLENGE.fullmatch(value), value
    assert value.isascii()
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
    # The description itself still reaches the JSON body, properly escaped.
    assert json.loads(r.body())["error_description"] == description


def test_error_answers_have_rfc_statuses() -> None:
    assert policy.invalid_token("x").status == 401
    assert policy.invalid_token("x").error == "invalid_token"
    assert 'error="invalid_token"' in challenge(policy.invalid_token("x"))
    assert policy.invalid_request("x").status == 400
    assert policy.invalid_grant("x").status == 400
    assert policy.invalid_grant("x").error == "invalid_grant"
    assert policy.invalid_grant("x").headers == ()
    unavailable = policy.store_unavailable()
    assert unavailable.status == 503
    assert dict(unavailable.headers)["Retry-After"] == "5"
    assert dict(policy.store_unavailable(7).headers)["Retry-After"] == "7"
    bad = policy.bad_gateway("alg none")
    assert bad.status == 502
    assert json.loads(bad.body()) == {
        "error": "server_error",
        "error_description": "authorization server response refused: alg none",
    }
    assert policy.missing_credentials().status == 401


# -----------------------------------------------------------------------------------------------------------
# read_handle


@pytest.mark.parametrize("value", [HANDLE, "a", "A-_z9"])
def test_read_handle_accepts_base64url(value: str) -> None:
    assert policy.read_handle(value) == value


@pytest.mark.parametrize(
    "value",
    [None, 42, ["x"], {"a": 1}, "", "a.b", "a b", "a+b", "é", "a" * (policy.MAX_HANDLE_LENGTH + 1), JWT],
)
def test_read_handle_refuses_anything_else(value: object) -> None:
    assert policy.read_handle(value) is None


# -----------------------------------------------------------------------------------------------------------
# client_authentication


def basic(client_id: str, secret: str) -> str:
    pair = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


ASSERTION = jwt.encode({"iss": "c", "sub": "c", "jti": "1"}, b"k" * 32, algorithm="HS256")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLIENT_AUTHENTICATIONS = {
    "Basic": (basic("demo client", "s3cret"), {}),
    "client_secret": ("", {"client_id": "demo client", "client_secret": "s3cret"}),
    "client_assertion": (
        "",
        {"client_id": "demo client", "client_assertion": ASSERTION, "client_assertion_type": ASSERTION_TYPE},
    ),
    "client_id only": ("", {"client_id": "demo client"}),
}


@pytest.mark.parametrize(
    ("authorization", "fields"), CLIENT_AUTHENTICATIONS.values(), ids=CLIENT_AUTHENTICATIONS
)
def test_client_authentication_names_the_client_and_hides_its_credentials(
    authorization: str, fields: dict[str, str]
) -> None:
    found = policy.client_authentication(authorization, {"grant_type": "refresh_token", **fields})
    assert found.startswith("demo client#")
    assert found == policy.client_authentication(authorization, {**fields, "refresh_token": "other"})
    for credential in ("s3cret", ASSERTION, ASSERTION.split(".")[1], authorization.partition(" ")[2] or "-"):
        assert credential not in found


@pytest.mark.parametrize(
    ("authorization", "fields"),
    [
        (basic("demo client", "wrong"), {}),
        (basic("other", "s3cret"), {}),
        ("", {"client_id": "demo client", "client_secret": "wrong"}),
        ("", {"client_id": "demo client", "client_secret": ["s3cret"]}),  # a JSON body: the type counts
        ("", {"client_id": "demo client", "client_assertion": ASSERTION + "x"}),
        ("", {"client_id": "demo client", "client_assertion": ASSERTION, "client_assertion_type": "other"}),
        ("", {"client_id": "demo client", "client_secret": "s3cret", "client_assertion": ASSERTION}),
        ("", {"client_id": "other client"}),
        ("", {}),
        (basic("demo client", "s3cret") + " ", {"client_secret": "more"}),
        ("Bearer x", {"client_id": "demo client"}),
    ],
)
def test_client_authentication_differs_with_any_credential(
    authorization: str, fields: dict[str, object]
) -> None:
    known = {policy.client_authentication(*case) for case in CLIENT_AUTHENTICATIONS.values()}
    assert len(known) == len(CLIENT_AUTHENTICATIONS)
    assert policy.client_authentication(authorization, fields) not in known


def test_client_authentication_survives_a_broken_basic_header() -> None:
    for value in ("Basic", "Basic !!!", "Basic " + base64.b64encode(b"\xff:x").decode()):
        found = policy.client_authentication(value, {"client_id": "demo"})
        assert found.startswith("demo#")
        assert found != policy.client_authentication("", {"client_id": "demo"})


# -----------------------------------------------------------------------------------------------------------
# Lifetimes


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (300, 300.0),
        (0, 0.0),
        (1.5, 1.5),
        ("300", 300.0),
        (" 300 ", 300.0),
        ("1e3", 1000.0),
        (True, None),
        (False, None),
        (None, None),
        (-1, None),
        ("-1", None),
        (float("nan"), None),
        (float("inf"), None),
        ("nan", None),
        ("inf", None),
        ("Infinity", None),
        ("1e400", None),
        ("abc", None),
        ("", None),
        ("1" * 40, None),
        (10**400, None),  # beyond float range: no usable lifetime, never OverflowError
        (-(10**400), None),
        ([300], None),
        ({"a": 1}, None),
    ],
)
def test_number(value: object, expected: float | None) -> None:
    assert policy.number(value) == expected


def test_expiry_prefers_exp_then_expires_in_then_cap() -> None:
    now = 1000.0
    assert policy.expiry(now, exp=1500, expires_in=100, max_ttl=3600) == 1500
    assert policy.expiry(now, exp=None, expires_in=100, max_ttl=3600) == 1100
    assert policy.expiry(now, exp=None, expires_in="100", max_ttl=3600) == 1100
    assert policy.expiry(now, max_ttl=3600) == 4600


def test_expiry_is_capped() -> None:
    now = 1000.0
    assert policy.expiry(now, exp=10**9, max_ttl=60) == 1060
    assert policy.expiry(now, expires_in=10**9, max_ttl=60) == 1060
    assert policy.expiry(now, exp=1e308, max_ttl=60) == 1060


@pytest.mark.parametrize("bad", [True, "soon", float("nan"), float("inf"), -5, 10**400, [1], {"x": 1}])
def test_expiry_bad_inputs_fall_back_and_stay_capped(bad: object) -> None:
    now = 1000.0
    assert policy.expiry(now, exp=bad, expires_in=30, max_ttl=60) == 1030
    assert policy.expiry(now, exp=bad, expires_in=bad, max_ttl=60) == 1060
    assert policy.expiry(now, expires_in=bad, max_ttl=60) == 1060
