"""Fixtures for end-to-end tests against panva's oidc-provider (scripts/oidc_provider.py); conftest.py
imports them."""

from collections.abc import Iterator

import pytest

from oidc_provider import start_oidc_provider
from procs import ManagedProcess


@pytest.fixture(scope="module")
def oidc_provider() -> Iterator[ManagedProcess]:
    """A running oidc-provider, one per test module that asks; its in-memory state lives as long."""
    with start_oidc_provider() as process:
        yield process
