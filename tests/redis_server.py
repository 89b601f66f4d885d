"""A real redis-server for tests, on a free loopback port with its data in a directory of its own.

``stop()`` then ``start()`` brings it back on the same port and directory, so a test can cause an outage and
watch the recovery; with ``appendonly=True`` the data survives that. ``pause()`` freezes it (SIGSTOP): a Redis
that accepts connections and never answers. ``kill()`` is a crash (SIGKILL): nothing is flushed.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import redis

from procs import ManagedProcess, free_port

_READY_TIMEOUT = 15.0


class RedisServer:
    def __init__(
        self,
        directory: Path,
        *,
        appendonly: bool = False,
        password: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        """``extra_args`` are more redis-server options, e.g. ``["--replicaof", "127.0.0.1", "6379"]``."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not on PATH: run `make install-system` (or `apt-get install redis-server`)"
            )
        self.directory = directory
        self.port = free_port()
        self.password = password
        # Keep ``directory`` short: a unix socket path must fit in 107 bytes.
        self.socket_path = directory / "redis.sock"
        self._args = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "yes" if appendonly else "no",
            "--dir", str(directory),
            "--daemonize", "no",
        ]  # fmt: skip
        if password is not None:
            self._args += ["--requirepass", password]
        self._args += extra_args
        self._process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://{self._userinfo()}127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self._userinfo()}{self.socket_path}?db=0"

    def _userinfo(self) -> str:
        return f":{quote(self.password, safe='')}@" if self.password else ""

    def start(self) -> None:
        """Start it and return once it answers PING (after loading its append-only file, if any)."""
        if self._process is not None:
            raise RuntimeError("redis-server is already running")
        self._process = ManagedProcess(self._args)
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=1)
        deadline = time.monotonic() + _READY_TIMEOUT
        try:
            while True:
                try:
                    client.ping()
                    return
                except (redis.ConnectionError, redis.TimeoutError):  # BusyLoadingError included
                    if self._process.proc.poll() is not None or time.monotonic() > deadline:
                        output = self._process.output()
                        self.stop()
                        raise RuntimeError(f"redis-server did not answer PING; output:\n{output}") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        """Shut it down (SIGTERM: the append-only file is flushed) and wait. Safe to call twice."""
        if self._process is None:
            return
        if self._process.proc.poll() is None:
            self.resume()  # a paused server would hold SIGTERM until the SIGKILL after a grace period
        self._process.stop()
        self._process = None

    def kill(self) -> None:
        """Crash it: SIGKILL, so it neither flushes nor says goodbye to replicas or clients."""
        process = self._running()
        os.kill(process.pid, signal.SIGKILL)
        process.stop()  # reaps it and collects its output
        self._process = None

    def pause(self) -> None:
        os.kill(self._running().pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self._running().pid, signal.SIGCONT)

    def _running(self) -> ManagedProcess:
        if self._process is None or self._process.proc.poll() is not None:
            raise RuntimeError("redis-server is not running")
        return self._process
