"""The refresh lock (refresh_lock.py) between two "proxies": two vaults on one store, a shared directory and
one real redis-server. The end-to-end form, with real mitmdump processes, is in test_e2e_scaleout.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from splittoken.refresh_lock import RefreshLock, WaitedTooLong
from splittoken.seal import Record, store_key
from splittoken.store import open_store
from splittoken.vault import Vault

TTL = 0.3  # short, so that waiting for a lease to run out costs little
HANDLE = "r" * 43
CLIENT = "demo-client#digest"


@pytest.fixture(params=["disk", "redis"])
def vaults(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Vault, Vault]]:
    spec = str(tmp_path / "store") if request.param == "disk" else request.getfixturevalue("redis_server").url
    pair = Vault(open_store(spec)), Vault(open_store(spec))
    pair[0].keep_now(HANDLE, refresh_record())
    yield pair
    for vault in pair:
        vault.close()


def refresh_record() -> Record:
    return Record("refresh", "the-real-refresh-token", time.time() + 600, "alice", "https://idp/token")


def rotated_record(client: str = CLIENT) -> Record:
    return Record(
        "rotated", '{"refresh_token": "next"}', time.time() + 10, "alice", "https://idp/token",
        client=client, refresh_token="the-real-refresh-token",
    )  # fmt: skip


def lease_name(client: str = CLIENT) -> str:
    return store_key(f"{HANDLE}\n{client}")


async def test_a_second_proxy_waits_and_gets_the_first_ones_answer(vaults: tuple[Vault, Vault]) -> None:
    a, b = RefreshLock(vaults[0], TTL), RefreshLock(vaults[1], TTL)
    held = await a.take("flow-a", HANDLE, CLIENT)
    assert held is not None and held.kind == "refresh"  # A holds the lease: it goes upstream
    waiting = asyncio.create_task(b.take("flow-b", HANDLE, CLIENT))
    # Longer than the ttl: A renews while its refresh is upstream, so B does not start a second one.
    await asyncio.sleep(TTL * 4)
    assert not waiting.done()
    vaults[0].keep_now(HANDLE, rotated_record())  # A's answer, stored as the rotated handle's record
    a.release("flow-a")
    answer = await waiting
    assert answer is not None and answer.kind == "rotated" and answer.client == CLIENT
    # Nobody holds the lease now: B left it as it found it.
    assert vaults[1].store.lease(lease_name(), "someone", TTL)


async def test_a_refused_refresh_ends_the_wait_with_nothing(vaults: tuple[Vault, Vault]) -> None:
    a, b = RefreshLock(vaults[0], TTL), RefreshLock(vaults[1], TTL)
    await a.take("flow-a", HANDLE, CLIENT)
    waiting = asyncio.create_task(b.take("flow-b", HANDLE, CLIENT))
    await asyncio.sleep(TTL)
    vaults[0].forget_now(HANDLE)  # the authorization server refused it: the handle is dead
    assert await waiting is None
    a.release("flow-a")


async def test_an_unrotated_answer_lets_the_next_refresh_go(vaults: tuple[Vault, Vault]) -> None:
    a, b = RefreshLock(vaults[0], TTL), RefreshLock(vaults[1], TTL)
    await a.take("flow-a", HANDLE, CLIENT)
    waiting = asyncio.create_task(b.take("flow-b", HANDLE, CLIENT))
    await asyncio.sleep(TTL)
    assert not waiting.done()
    a.release("flow-a")  # the record is still a refresh handle's (no rotation): B goes upstream in turn
    record = await waiting
    assert record is not None and record.kind == "refresh"
    assert not vaults[0].store.lease(lease_name(), "someone", TTL)  # held by B now
    b.release("flow-b")


async def test_a_dead_holder_is_taken_over_when_its_lease_runs_out(vaults: tuple[Vault, Vault]) -> None:
    # A proxy that died holding the lease: taken, never renewed, never released.
    assert vaults[0].store.lease(lease_name(), "dead-proxy", TTL)
    b = RefreshLock(vaults[1], TTL)
    record = await b.take("flow-b", HANDLE, CLIENT)
    assert record is not None and record.kind == "refresh"
    assert not vaults[0].store.release(lease_name(), "dead-proxy")  # B's now, not the dead one's
    b.release("flow-b")


async def test_another_client_authentication_does_not_wait(vaults: tuple[Vault, Vault]) -> None:
    a, b = RefreshLock(vaults[0], TTL), RefreshLock(vaults[1], TTL)
    await a.take("flow-a", HANDLE, CLIENT)
    # A stolen handle with a guessed secret can neither share the owner's answer nor hold up its refresh.
    record = await asyncio.wait_for(b.take("flow-b", HANDLE, "demo-client#guessed"), 5)
    assert record is not None and record.kind == "refresh"
    a.release("flow-a")
    b.release("flow-b")


async def test_the_wait_is_bounded(vaults: tuple[Vault, Vault]) -> None:
    a, b = RefreshLock(vaults[0], TTL), RefreshLock(vaults[1], TTL, longest=TTL * 2)
    await a.take("flow-a", HANDLE, CLIENT)
    with pytest.raises(WaitedTooLong):
        await b.take("flow-b", HANDLE, CLIENT)
    a.release("flow-a")


async def test_a_holder_renews_for_so_long_only(vaults: tuple[Vault, Vault]) -> None:
    # A flow whose end the proxy never learns: its lease is renewed for ``longest`` and then let go.
    a = RefreshLock(vaults[0], TTL, longest=TTL * 2)
    await a.take("flow-a", HANDLE, CLIENT)
    b = RefreshLock(vaults[1], TTL)
    record = await b.take("flow-b", HANDLE, CLIENT)
    assert record is not None and record.kind == "refresh"
    b.release("flow-b")
