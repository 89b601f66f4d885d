"""audit_trail.py: an audit trail that is ordered, survives logrotate and never blocks. Real files and FIFOs;
the writer is stalled by a FIFO nobody reads, not by sleeps."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from splittoken.audit import Event, Reason, handle_id
from splittoken.audit_trail import AuditTrail
from test_audit import CLIENT, HANDLE, REFRESH_HANDLE


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for_lines(path: Path, count: int) -> None:
    """Until the writer thread has appended ``count`` lines (a rotation must come after them)."""
    deadline = time.monotonic() + 10
    while not path.exists() or len(path.read_bytes().splitlines()) < count:
        assert time.monotonic() < deadline, f"the writer did not write {count} lines"
        time.sleep(0.005)


def test_every_event_and_field_in_order(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    access, refresh = handle_id(HANDLE), handle_id(REFRESH_HANDLE)
    new_access, new_refresh = handle_id(HANDLE + "2"), handle_id(REFRESH_HANDLE + "2")
    trail = AuditTrail(path)
    assert trail.record(Event.SPLIT, handle_id=access, refresh_handle_id=refresh, sub="alice", client=CLIENT)
    assert trail.record("join", handle_id=access, sub="alice", client=("::1", 443, 0, 0))
    assert trail.record(Event.JOIN, handle_id=access, sub='eyJohn.Doe "名前"', client=("fe80::1%eth0", 1))
    assert trail.record(Event.REFUSE, handle_id=access, reason=Reason.DESTINATION, client=CLIENT)
    assert trail.record(Event.REFUSE, reason="not a reason we know")
    assert trail.record(
        Event.REFRESH, handle_id=new_access, old_handle_id=refresh, new_handle_id=new_refresh, sub="alice"
    )
    assert trail.record(Event.INTROSPECT, handle_id=new_access)
    assert trail.record(Event.REVOKE, handle_id=new_refresh, client=CLIENT)
    assert trail.close()
    got = lines(path)
    stamps = [datetime.fromisoformat(line.pop("ts")) for line in got]
    assert got == [
        {"event": "split", "handle_id": access, "refresh_handle_id": refresh, "sub": "alice",
         "client": "192.0.2.7:50123"},
        {"event": "join", "handle_id": access, "sub": "alice", "client": "[::1]:443"},
        {"event": "join", "handle_id": access, "sub": 'eyJohn.Doe "名前"', "client": "[fe80::1]:1"},
        {"event": "refuse", "handle_id": access, "reason": "destination", "client": "192.0.2.7:50123"},
        {"event": "refuse", "reason": "other"},
        {"event": "refresh", "handle_id": new_access, "old_handle_id": refresh, "new_handle_id": new_refresh,
         "sub": "alice"},
        {"event": "introspect", "handle_id": new_access},
        {"event": "revoke", "handle_id": new_refresh, "client": "192.0.2.7:50123"},
    ]  # fmt: skip
    assert stamps == sorted(stamps)
    assert all(stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0 for stamp in stamps)
    assert all(line.split('"ts":"', 1)[1][:27].endswith("Z") for line in path.read_text().splitlines())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_many_events_are_written_in_the_order_recorded(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    ids = [handle_id(f"handle-{n}") for n in range(5000)]
    trail = AuditTrail(path, queue_size=len(ids))
    for hid in ids:
        assert trail.record(Event.JOIN, handle_id=hid)
    assert trail.close()
    assert [line["handle_id"] for line in lines(path)] == ids
    assert trail.dropped == 0


def test_rotation_by_rename(tmp_path: Path) -> None:
    path, rotated = tmp_path / "audit.log", tmp_path / "audit.log.1"
    trail = AuditTrail(path)
    trail.record(Event.JOIN, handle_id=handle_id("a"))
    trail.record(Event.JOIN, handle_id=handle_id("b"))
    wait_for_lines(path, 2)
    path.rename(rotated)  # logrotate without "create": the path is gone until the writer makes it again
    trail.record(Event.JOIN, handle_id=handle_id("c"))
    wait_for_lines(path, 1)
    path.rename(rotated.with_suffix(".2"))
    path.touch(mode=0o640)  # logrotate's "create 0640": the writer takes the new file as it is
    os.chmod(path, 0o640)
    trail.record(Event.JOIN, handle_id=handle_id("d"))
    assert trail.close()
    assert [line["handle_id"] for line in lines(rotated)] == [handle_id("a"), handle_id("b")]
    assert [line["handle_id"] for line in lines(rotated.with_suffix(".2"))] == [handle_id("c")]
    assert stat.S_IMODE(rotated.with_suffix(".2").stat().st_mode) == 0o600
    assert [line["handle_id"] for line in lines(path)] == [handle_id("d")]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert trail.dropped == 0


def test_rotation_by_copytruncate(tmp_path: Path) -> None:
    path, copy = tmp_path / "audit.log", tmp_path / "audit.log.1"
    trail = AuditTrail(path)
    trail.record(Event.JOIN, handle_id=handle_id("a"))
    trail.record(Event.JOIN, handle_id=handle_id("b"))
    wait_for_lines(path, 2)
    shutil.copyfile(path, copy)
    os.truncate(path, 0)
    trail.record(Event.JOIN, handle_id=handle_id("c"))
    assert trail.close()
    assert [line["handle_id"] for line in lines(copy)] == [handle_id("a"), handle_id("b")]
    data = path.read_bytes()
    assert b"\0" not in data  # appended at the new end, not at the old offset past a hole
    assert [line["handle_id"] for line in lines(path)] == [handle_id("c")]


def fill(fd: int) -> None:
    """Fill the pipe behind ``fd`` (non-blocking) until it takes no more."""
    block = b"\n" * 4096
    while True:
        try:
            os.write(fd, block)
        except BlockingIOError:
            return


def test_stalled_writer_drops_counts_and_never_blocks_record(tmp_path: Path) -> None:
    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    filler = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, 4096)
    fill(filler)  # nobody reads: the writer's first write blocks for as long as the test wants
    os.close(filler)
    trail = AuditTrail(fifo, queue_size=10)
    ids = [handle_id(f"handle-{n}") for n in range(3000)]
    # The writer can hold one batch (at most 1000) and the queue 10; everything else must be dropped, and
    # every record() returns (a blocking one would hang here until pytest-timeout).
    accepted = [hid for hid in ids if trail.record(Event.JOIN, handle_id=hid)]
    assert len(accepted) <= 1010
    assert trail.dropped == len(ids) - len(accepted)
    assert not trail.close(timeout=0.05)  # bounded: the writer is still stuck, close gives up and says so

    chunks: list[bytes] = []

    def drain() -> None:
        os.set_blocking(reader, True)
        while chunk := os.read(reader, 65536):
            chunks.append(chunk)

    draining = threading.Thread(target=drain)
    draining.start()
    assert trail.close()
    draining.join(timeout=10)
    os.close(reader)
    written = [json.loads(line) for line in b"".join(chunks).splitlines() if line]
    assert [line["handle_id"] for line in written] == accepted
    assert trail.dropped == len(ids) - len(accepted)
    assert not trail.record(Event.JOIN, handle_id=ids[0])  # after close: dropped, counted
    assert trail.dropped == len(ids) - len(accepted) + 1


def test_failed_writes_are_counted_and_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    trail = AuditTrail(fifo)
    os.close(reader)  # every write now fails with EPIPE
    for n in range(5):
        assert trail.record(Event.SPLIT, handle_id=handle_id(f"h{n}"))
    assert trail.close()
    assert trail.dropped == 5
    warnings = [r.getMessage() for r in caplog.records if r.name == "splittoken.audit"]
    assert len(warnings) == 1
    assert "cannot write" in warnings[0]


def test_a_path_that_cannot_be_written_fails_at_once(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        AuditTrail(tmp_path / "no such directory" / "audit.log")
    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="No such device"):  # ENXIO: a FIFO without a reader, not a hang
        AuditTrail(fifo)
    with pytest.raises(ValueError, match="queue_size"):
        AuditTrail(tmp_path / "audit.log", queue_size=0)
