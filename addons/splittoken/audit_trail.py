"""The audit trail's file: lines appended from a thread of their own, so that recording never blocks.

    trail = AuditTrail("/var/log/splittoken/audit.log")
    trail.record(Event.JOIN, handle_id=handle_id(handle), sub="alice", client=("192.0.2.7", 50123))
    ...
    trail.close()

``record`` puts the event on a bounded queue and a thread appends it to the file; when the queue is full
(a slow or stalled disk) the event is dropped and counted in ``dropped``. What a line may hold is audit.py's.

The file works with logrotate either way: after a rotation by rename (``create``) the writer sees that the
path names another file (device and inode, as logging.handlers.WatchedFileHandler) and opens the new one;
with ``copytruncate`` it keeps writing at the new end, since it appends (O_APPEND). POSIX only.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import queue
import threading
import time
from typing import Any

from .audit import Event, line

logger = logging.getLogger("splittoken.audit")  # the name operators already filter on

_BATCH = 1000  # lines per write; bounds the memory of one batch, not the queue
_LINGER = 0.05  # seconds the writer waits after an event for more to write with it


def _timestamp(ts: float) -> str:
    """RFC 3339, UTC, microseconds."""
    second, micro = divmod(round(ts * 1_000_000), 1_000_000)
    return f"{_second(second)}.{micro:06d}Z"


@functools.lru_cache(maxsize=2)
def _second(second: int) -> str:
    # A batch mostly shares its second: formatting a date costs more than the rest of a line.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def _open(path: str) -> tuple[int, tuple[int, int]]:
    """Open ``path`` for appending, created with mode 0600, and say which file it is (device, inode).
    Opened non-blocking so that a FIFO without a reader fails (ENXIO) instead of hanging the caller; writes
    block again afterwards, on the writer thread only."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    st = os.fstat(fd)
    return fd, (st.st_dev, st.st_ino)


class AuditTrail:
    """Appends audit events to ``path`` from a thread of its own. Opens the file at once, so that a path
    that cannot be written fails here (OSError), not on the first event."""

    def __init__(self, path: str | os.PathLike[str], queue_size: int = 10_000) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.path = os.fspath(path)
        self.queue_size = queue_size
        self._fd: int | None
        self._fd, self._identity = _open(self.path)
        # A SimpleQueue and a size check rather than a bounded Queue: a twentieth of the cost per event. Two
        # threads recording at once may overshoot the bound by one event each, which a memory bound can take.
        self._queue: queue.SimpleQueue[tuple[float, str] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._dropped = 0
        self._closed = False
        self._failing = False
        self._writer = threading.Thread(target=self._run, name="splittoken-audit", daemon=True)
        self._writer.start()

    @property
    def dropped(self) -> int:
        """Events that never reached the file: the queue was full, the trail closed, or a write failed."""
        return self._dropped

    def _drop(self, count: int) -> None:
        with self._lock:
            self._dropped += count

    def record(self, event: Event | str, **fields: Any) -> bool:
        """Queue one event (``audit.line`` checks it and its fields); True when queued, False when dropped.
        Never blocks."""
        ts = time.time()
        members = line(event, **fields)
        if self._closed or self._queue.qsize() >= self.queue_size:
            self._drop(1)
            return False
        self._queue.put((ts, members))
        return True

    def _run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is not None:
                    # Let a batch gather: one wake-up, stat and write for many events, rather than a thread
                    # switch per event competing with the proxy's event loop for the GIL.
                    time.sleep(_LINGER)
                batch = []
                while item is not None:
                    batch.append(item)
                    if len(batch) == _BATCH:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                if batch:
                    self._write(batch)
                if item is None:
                    return
        finally:
            if self._fd is not None:
                os.close(self._fd)

    def _write(self, batch: list[tuple[float, str]]) -> None:
        data = "".join(f'{{"ts":"{_timestamp(ts)}",{members}}}\n' for ts, members in batch).encode()
        try:
            fd = self._current_fd()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as e:
            self._drop(len(batch))
            if not self._failing:
                logger.warning("audit trail %s: cannot write (%s); dropping events", self.path, e)
            self._failing = True
            return
        if self._failing:
            logger.warning("audit trail %s: writing again", self.path)
        self._failing = False

    def _current_fd(self) -> int:
        """The descriptor of the file ``path`` names now: reopened after a rotation by rename, or after the
        file was deleted, or when an earlier open failed."""
        try:
            st = os.stat(self.path)
            current = (st.st_dev, st.st_ino) == self._identity
        except FileNotFoundError:
            current = False
        if self._fd is not None and current:
            return self._fd
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._fd, self._identity = _open(self.path)
        return self._fd

    def close(self, timeout: float = 5.0) -> bool:
        """Write what is queued and stop the writer, waiting at most ``timeout`` seconds. True when every
        queued event was handled; False when the writer is stalled: it goes on in the background and stops
        once it has caught up (a later close waits again). Events recorded after close are dropped."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        self._writer.join(timeout)
        if self._writer.is_alive():
            return False
        # A record() that raced with close() may have queued after the stop marker.
        leftovers = 0
        while True:
            try:
                leftovers += self._queue.get_nowait() is not None
            except queue.Empty:
                break
        self._drop(leftovers)
        return True
