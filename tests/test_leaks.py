"""leaks.py: whether a body or header holds a JWS, or a given secret in any form a client reads."""

from __future__ import annotations

from collections.abc import Callable

import jwt
import pytest

from splittoken import jws, leaks

HANDLE = "dGhpcy1pcy1hLXNpZ25hdHVyZS1oYW5kbGUtb2YtNDMtY2hhcnMx"
JWT = jwt.encode({"sub": "alice", "exp": 1_800_000_000}, b"k" * 32, algorithm="HS256")


# -----------------------------------------------------------------------------------------------------------
# strings_in / leaked_jws


def test_strings_in_walks_keys_values_and_deep_nesting() -> None:
    deep: object = "bottom"
    for _ in range(50_000):
        deep = [deep]
    found = set(leaks.strings_in({"k": {"inner": ["x", 1, None, {"y": "z"}]}, "d": deep}))
    assert found == {"k", "inner", "x", "y", "z", "d", "bottom"}


def test_leaked_jws() -> None:
    assert not leaks.leaked_jws({"access_token": HANDLE, "id_token": JWT}, allowed=JWT)
    assert leaks.leaked_jws({"access_token": HANDLE, "id_token": JWT}, allowed=None)
    assert leaks.leaked_jws({"access_token": HANDLE, "x": {"y": [JWT]}}, allowed=None)
    assert leaks.leaked_jws({JWT: 1}, allowed=None)  # in a key
    assert leaks.leaked_jws({"note": f"token is {JWT}."}, allowed=None)
    other = jwt.encode({"sub": "bob"}, b"k" * 32, algorithm="HS256")
    assert leaks.leaked_jws({"id_token": JWT, "copy": "x." + other}, allowed=JWT)  # hidden in a longer run
    assert not leaks.leaked_jws({"id_token": JWT, "copy": JWT}, allowed=JWT)  # the id_token twice is fine
    assert leaks.leaked_jws({"id_token": JWT + ".x"}, allowed=JWT + ".x")  # id_token itself not a bare JWS
    assert not leaks.leaked_jws({"host": "api.example.com", "n": 1.5, "b": True}, allowed=None)
    assert not leaks.leaked_jws({}, allowed=None)


@pytest.mark.parametrize(
    "template",
    [
        '[["\\u0000{jwt}"]]',  # JSON text inside a field: the escape's "0000" would glue to the header
        '{"t": "\\n{jwt}"}',
        '{"t": "\\u0065{rest}"}',  # the token's own "e", escaped
        "a=%3A{jwt}",  # a query string inside a field
        "x=%65{rest}",
    ],
)
def test_leaked_jws_sees_through_escapes_inside_a_value(template: str) -> None:
    value = template.replace("{jwt}", JWT).replace("{rest}", JWT[1:])
    assert JWT not in list(jws.find_jws(value))  # the token itself is hidden from a plain scan...
    assert leaks.leaked_jws({"note": value}, allowed=None)  # ...not from leaked_jws
    assert not leaks.leaked_jws({"note": value.replace(JWT[1:], "opaque")}, allowed=None)


# -----------------------------------------------------------------------------------------------------------
# quotes / scrubbed: what the proxy swapped into a request, in its answer

REAL = "rt-Zm9vYmFy/baz+qux=="  # a refresh token with characters that escaping changes
OTHER = "rt-YmFyYmF6/qux+foo=="


def json_escaped(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


def percent_encoded(text: str) -> str:
    return "".join(f"%{b:02X}" for b in text.encode())


QUOTED: dict[str, Callable[[str], str]] = {
    "plain": lambda t: f'{{"error_description": "bad {t}"}}',
    "JSON-escaped": lambda t: f'{{"error_description": "bad {json_escaped(t)}"}}',
    "one character escaped": lambda t: f'{{"e": "{t[:3]}\\u{ord(t[3]):04x}{t[4:]}"}}',
    "slash escaped": lambda t: '{"e": "' + t.replace("/", "\\/") + '"}',
    "percent-encoded": lambda t: f"error_description=bad+{percent_encoded(t)}",
    "lower-case percent": lambda t: f"e={percent_encoded(t).lower()}",
    "percent inside JSON": lambda t: f'{{"e": "{percent_encoded(t)}"}}',
    "JSON escapes percent-encoded": lambda t: f"e={percent_encoded(json_escaped(t))}",
}


@pytest.mark.parametrize("quote", QUOTED.values(), ids=QUOTED.keys())
def test_quotes_finds_the_token_in_any_form_a_client_reads(quote: Callable[[str], str]) -> None:
    assert leaks.quotes(quote(REAL).encode(), REAL)
    assert leaks.quotes(quote(REAL), REAL)  # a header value
    assert leaks.quotes(quote(REAL).encode("utf-16"), REAL)
    assert not leaks.quotes(quote(OTHER).encode(), REAL)  # another token, quoted the same way
    assert not leaks.quotes(quote(OTHER), REAL)


def test_quotes_is_about_that_token_only() -> None:
    assert not leaks.quotes(f'{{"refresh_token": "{REAL[:-1]}"}}'.encode(), REAL)
    assert not leaks.quotes(b"", REAL)


def test_scrubbed_replaces_the_token_as_it_stands_by_its_handle() -> None:
    raw = f'{{"error": "invalid_grant", "error_description": "bad {REAL}", "again": "{REAL}"}}'.encode()
    clean = leaks.scrubbed(raw, ["application/json"], REAL, HANDLE)
    assert clean == raw.replace(REAL.encode(), HANDLE.encode())
    assert leaks.scrubbed(b"{}", [], REAL, HANDLE) == b"{}"


@pytest.mark.parametrize("quote", [v for k, v in QUOTED.items() if k != "plain"])
def test_scrubbed_refuses_the_token_in_another_form(quote: Callable[[str], str]) -> None:
    assert leaks.scrubbed(f"{quote(REAL)} and {REAL}".encode(), [], REAL, HANDLE) is None


@pytest.mark.parametrize("header", [f"token={REAL}", f"t={percent_encoded(REAL)}", json_escaped(REAL)])
def test_scrubbed_refuses_the_token_in_a_header(header: str) -> None:
    assert leaks.scrubbed(b'{"error": "invalid_grant"}', ["text/plain", header], REAL, HANDLE) is None


# -----------------------------------------------------------------------------------------------------------
# Authorization responses: an id_token is the client's, any other JWS is not


@pytest.mark.parametrize(
    ("location", "holds"),
    [
        (f"https://app/cb#code=c&id_token={JWT}&state=s", False),
        (f"https://app/cb?id_token={JWT}&id_token={JWT}", False),
        (f"https://app/cb#access_token={JWT}", True),
        (f"https://app/cb#id_token={JWT}&access_token={JWT}", True),
        (f"https://app/cb?x=1#id_tokens={JWT}", True),
        (f"https://app/cb#id_token%3D{JWT}", True),  # not an id_token parameter to a client
        (f"https://app/{JWT}?id_token=x", True),
    ],
)
def test_redirect_holds_jws_spares_only_id_token_parameters(location: str, holds: bool) -> None:
    assert leaks.redirect_holds_jws(location) is holds


@pytest.mark.parametrize(
    ("page", "holds"),
    [
        (f'<input type="hidden" name="id_token" value="{JWT}"/>', False),
        (f"<INPUT value='{JWT}' NAME=id_token>", False),
        (f'<input name="id_token" value="x"><input name="access_token" value="{JWT}">', True),
        (f'<input name="id_tokenX" value="{JWT}">', True),
        (f"<p>{JWT}</p>", True),
    ],
)
def test_page_holds_jws_spares_only_id_token_inputs(page: str, holds: bool) -> None:
    assert leaks.page_holds_jws(page.encode()) is holds


@pytest.mark.parametrize(
    "value",
    [
        {"protected": "eyJhbGciOiJSUzI1NiJ9", "payload": "eyJzdWIiOiJhbGljZSJ9", "signature": "c2ln"},
        {"payload": "eyJzdWIiOiJhbGljZSJ9", "signatures": [{"protected": "eyJ9", "signature": "c2ln"}]},
        '{"payload": "eyJzdWIiOiJhbGljZSJ9", "signature": "c2ln", "protected": "eyJhbGciOiJSUzI1NiJ9"}',
    ],
    ids=["flattened", "general", "flattened in a string"],
)
def test_a_jws_in_json_serialization_is_a_jws(value: object) -> None:
    """RFC 7515 §7.2: its claims are as readable as a compact JWS's, and ``protected.payload.signature``
    is the compact one. Without the check an access_token in this form reached the client."""
    assert leaks.leaked_jws({"access_token": value}, allowed=None)
    assert not leaks.leaked_jws({"access_token": {"payload": "x"}, "note": "payload"}, allowed=None)
