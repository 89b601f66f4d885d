"""htu.py: the URI a DPoP proof names, normalised as RFC 3986 §6.2.2 and §6.2.3 say, or refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splittoken import htu
from splittoken.errors import ProofRefused


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("HTTP://Example.COM:80", "http://example.com/"),
        ("https://example.com:8443/a/b/c/./../../g", "https://example.com:8443/a/g"),
        ("https://example.com/a/b/..", "https://example.com/a/"),
        ("https://example.com/..", "https://example.com/"),
        ("https://example.com/a//b/", "https://example.com/a//b/"),
        ("https://example.com/%7euser/%e2%82%ac", "https://example.com/~user/%E2%82%AC"),
        ("https://%45xample.com/", "https://example.com/"),
        ("https://example.com:0443/", "https://example.com/"),
        ("https://example.com:65535/", "https://example.com:65535/"),
        ("https://1.2.3.4:443/", "https://1.2.3.4/"),
        ("https://[::FFFF:1.2.3.4]/", "https://[::ffff:1.2.3.4]/"),
    ],
)
def test_normalise_htu(url: str, normal: str) -> None:
    assert htu.normalise_htu(url) == normal


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "example.com/token",
        "https:///token",
        "https://user@example.com/",
        "https://example.com:99999/",
        "https://example.com:x/",
        "https://[v1.x]/",
        "https://[::1/",
        "https://exa mple.com/",
        "https://example.com/a b",
        "https://example.com/\u00fc",
        "https://example.com/\ttoken",
        "https://example.com/%zz",
        "https://h:80:90/",
        "https://example.com:65536/",
        "https://example.com:000443/",
        "https://[::1]x/",  # urllib drops the "x"
        "https://x[::1]/",  # urllib takes this for an IPv6 host
        "https://[fe80::1%25eth0]/",
        "https://[1:2:3]/",
        "https://[::1::2]/",
        "https://:443/",
        "",
    ],
)
def test_normalise_htu_refuses_what_is_not_an_http_uri(url: str) -> None:
    with pytest.raises(ProofRefused, match="not an absolute http"):
        htu.normalise_htu(url)


_url_parts = st.tuples(
    st.sampled_from(["http", "HTTPS", "https", "ftp", ""]),
    st.sampled_from(["example.com", "EXAMPLE.com", "[::1]", "[0:0::1]", "%41b", "", "u@h", "h:"]),
    st.sampled_from(["", ":80", ":443", ":8443", ":", ":99999", ":x"]),
    st.lists(
        st.sampled_from(["a", ".", "..", "", "%2e", "%2E%2e", "%7e", "%2f", "%zz", "~", "b c"]), max_size=6
    ),
    st.sampled_from(["", "?q=1", "#f", "?a#b"]),
)


@settings(max_examples=400, deadline=None)
@given(_url_parts | st.text(max_size=60))
def test_fuzz_normalise_htu_is_idempotent_and_never_crashes(
    url: tuple[str, str, str, list[str], str] | str,
) -> None:
    if isinstance(url, tuple):
        scheme, host, port, segments, tail = url
        url = f"{scheme}://{host}{port}{''.join('/' + s for s in segments)}{tail}"
    try:
        normal = htu.normalise_htu(url)
    except ProofRefused:
        return
    assert htu.normalise_htu(normal) == normal
    assert "?" not in normal and "#" not in normal
    assert "/./" not in normal + "/" and "/../" not in normal + "/"
