"""The audit trail: one JSON object per line for every event in a handle's life, and never a secret.

    trail = AuditTrail("/var/log/splittoken/audit.log")
    trail.record(Event.JOIN, handle_id=handle_id(handle), sub="alice", client=("192.0.2.7", 50123))
    ...
    trail.close()

A line names a handle only by ``handle_id``, a hash that cannot be turned back into the handle. ``record``
accepts only the fields of its signature, each checked for its type and shape, so that a token, a handle or
a claim other than ``sub`` cannot end up in a line by mistake: every id must look like ``handle_id``'s
output, a reason is one of the fixed ``Reason`` values, a client is an IP address and a port, and a ``sub``
that looks like a JWS is refused. ``record`` never blocks: it puts the event on a bounded queue and a thread
appends it to the file; when the queue is full (a slow or stalled disk) the event is dropped and counted in
``dropped``.

The file works with logrotate either way: after a rotation by rename (``create``) the writer sees that the
path names another file (device and inode, as logging.handlers.WatchedFileHandler) and opens the new one;
with ``copytruncate`` it keeps writing at the new end, since it appends (O_APPEND). POSIX only.
"""

from __future__ import annotations

import enum
import fcntl
import functools
import hashlib
import ipaddress
import json
import logging
import os
import queue
import re
import threading
import time
from typing import Any

logger = logging.getLogger(__name__)

# A separate domain from seal.store_key (plain SHA-256 of the handle): an audit line, which goes to log
# shippers and people who never see the store, must not double as the key of the handle's sealed record.
_HANDLE_ID_DOMAIN = b"splittoken audit handle id v1\x00"
_HANDLE_ID = re.compile(r"[0-9a-f]{32}")
# A compact JWS or JWE starts with a base64url JSON object ('{"' encodes as "eyJ"), a header of at least
# '{"alg":"…"}' (16 characters in base64url), then a dot.
_JWS_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]{13,}\.")
_MAX_SUB = 255  # OpenID Connect Core 1.0, section 2: sub is at most 255 ASCII characters
_BATCH = 1000  # lines per write; bounds the memory of one batch, not the queue
_LINGER = 0.05  # seconds the writer waits after an event for more to write with it


class Event(enum.StrEnum):
    SPLIT = "split"
    JOIN = "join"
    REFUSE = "refuse"
    REFRESH = "refresh"
    REVOKE = "revoke"
    INTROSPECT = "introspect"


class Reason(enum.StrEnum):
    """Why the proxy refused a request: the ``reason`` of a refuse line and the label of
    ``splittoken_refusals_total``. A fixed set, so that no free text (let alone a token) can get into
    either; a value outside it becomes ``OTHER``."""

    UNKNOWN_HANDLE = "unknown_handle"  # unknown, expired or revoked handle
    MALFORMED = "malformed"  # an Authorization header that is not one Bearer credential
    MISSING = "missing"  # no credential where one is needed
    CLIENT_JWT = "client_jwt"  # the client presented a full JWT instead of its handle
    DPOP = "dpop"  # a missing or invalid DPoP proof
    STORE_UNAVAILABLE = "store_unavailable"
    BAD_GATEWAY = "bad_gateway"  # an authorization server answer the proxy will not hand on
    INVALID_GRANT = "invalid_grant"  # unknown, expired or revoked refresh handle
    DESTINATION = "destination"  # a handle sent to a host it is not for
    METHOD = "method"  # a method that would echo the token back (TRACE)
    API_RESPONSE = "api_response"  # an API answer quoting the JWT in a form that cannot be rewritten
    TIMEOUT = "timeout"  # waited too long for a refresh of the same handle under way
    INTERNAL = "internal"  # the proxy failed (a bug): the request refused rather than passed as is
    OTHER = "other"

    @classmethod
    def _missing_(cls, value: object) -> Reason:
        return cls.OTHER


def handle_id(handle: str) -> str:
    """A stable id for the audit trail: the same for every event about ``handle``, and neither the handle,
    nor a prefix of it, nor its store key. A handle carries at least 256 bits (a signature or a random
    refresh handle), so its hash cannot be reversed by guessing; 128 bits of it keep ids apart."""
    return hashlib.sha256(_HANDLE_ID_DOMAIN + handle.encode()).hexdigest()[:32]


def _members(
    event: Event, *, handle_id: str | None, refresh_handle_id: str | None, reason: Reason | str | None,
    old_handle_id: str | None, new_handle_id: str | None, sub: str | None, client: tuple[Any, ...] | None,
) -> str:  # fmt: skip
    # The line's members after "ts", joined by hand rather than by json.dumps on the writer: every value
    # but sub is checked to be text that JSON needs no escape for (hex ids, enum values, an address).
    members = f'"event":"{event.value}"'
    if handle_id is not None:
        members += f',"handle_id":"{_checked_id("handle_id", handle_id)}"'
    if refresh_handle_id is not None:
        members += f',"refresh_handle_id":"{_checked_id("refresh_handle_id", refresh_handle_id)}"'
    if reason is not None:
        members += f',"reason":"{Reason(reason).value}"'
    if old_handle_id is not None:
        members += f',"old_handle_id":"{_checked_id("old_handle_id", old_handle_id)}"'
    if new_handle_id is not None:
        members += f',"new_handle_id":"{_checked_id("new_handle_id", new_handle_id)}"'
    if sub is not None:
        members += _sub_member(sub)
    if client is not None:
        members += f',"client":"{_client_address(client)}"'
    return members


def _checked_id(name: str, value: str) -> str:
    if not isinstance(value, str) or not _HANDLE_ID.fullmatch(value):
        raise ValueError(f"{name} must be the output of handle_id(), not a handle or a token")
    return value


def _sub_member(sub: str) -> str:
    if not isinstance(sub, str) or not sub.isprintable() or len(sub) > _MAX_SUB:
        raise ValueError(f"sub must be printable text of at most {_MAX_SUB} characters")
    return _checked_sub_member(sub)


@functools.lru_cache(maxsize=4096)
def _checked_sub_member(sub: str) -> str:
    # Cached: the same few subjects come again and again, and checking and encoding one costs more than the
    # rest of record(). A sub is no secret (it is in every line), so keeping it here is no risk.
    if _JWS_LIKE.search(sub):
        raise ValueError("sub looks like a JWS: pass the sub claim, not a token")
    return f',"sub":{json.dumps(sub)}'


_NOT_AN_ADDRESS = "client must be a socket address (IP address, port)"


def _client_address(client: tuple[Any, ...]) -> str:
    """``host:port`` (``[v6]:port``) from a socket address such as mitmproxy's ``client_conn.peername``;
    only an IP address and a port number pass."""
    if len(client) < 2 or not isinstance(client[0], str) or type(client[1]) is not int:
        raise ValueError(_NOT_AN_ADDRESS)
    return _address(client[0], client[1])


@functools.lru_cache(maxsize=4096)
def _address(host: str, port: int) -> str:
    # Cached: parsing an address costs more than the rest of record(), and a connection sends many requests.
    # The IPv6 scope (fe80::1%eth0) is free text: left out.
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        raise ValueError(_NOT_AN_ADDRESS) from None
    if not 0 <= port <= 65535:
        raise ValueError(_NOT_AN_ADDRESS)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


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

    def record(
        self,
        event: Event | str,
        *,
        handle_id: str | None = None,
        sub: str | None = None,
        reason: Reason | str | None = None,
        client: tuple[Any, ...] | None = None,
        refresh_handle_id: str | None = None,
        old_handle_id: str | None = None,
        new_handle_id: str | None = None,
    ) -> bool:
        """Queue one event; True when queued, False when dropped. Never blocks. Raises ValueError for a
        field that is not what it should be (see the module's docstring); ``reason`` is required for a
        refuse event and only allowed there, ``old_handle_id``/``new_handle_id`` only for a refresh."""
        ts = time.time()
        try:
            event = Event(event)
        except ValueError:
            # Enum's own message quotes the value, which must not reach a log if it was a token.
            raise ValueError(f"event must be one of {', '.join(Event)}") from None
        if (reason is None) == (event is Event.REFUSE):
            raise ValueError("reason is required for a refuse event and allowed for no other")
        if (old_handle_id is not None or new_handle_id is not None) and event is not Event.REFRESH:
            raise ValueError("old_handle_id and new_handle_id belong to a refresh event")
        members = _members(
            event, handle_id=handle_id, refresh_handle_id=refresh_handle_id, reason=reason,
            old_handle_id=old_handle_id, new_handle_id=new_handle_id, sub=sub, client=client,
        )  # fmt: skip
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
