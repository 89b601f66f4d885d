"""Start helper processes for end-to-end tests, wait until they are ready, and stop them by their own PID.

    with start_process([sys.executable, "scripts/echo_api.py"], listening_on("echo-api")) as api:
        requests.get(api.url + "/hello")

    port = free_port()
    proxy = start_process(["mitmdump", "-p", str(port)], "HTTP(S) proxy listening at",
                          url=f"http://127.0.0.1:{port}")
    ...
    proxy.stop()

Every process starts in its own session (``start_new_session=True``), so ``stop()`` can signal its whole
process group and nothing else. Fixed ports and ``pkill`` are never needed.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

# Loopback stands in for a wildcard bind address (mitmdump prints "*:8080"): that is what tests connect to.
_WILDCARDS = {"*", "", "0.0.0.0", "::", "[::]"}


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago, for a server started next; prefer ``--port 0`` and reading the port
    from the ready line where the program supports it.

    Picked below the kernel's ephemeral range, where the port 0 trick would pick: there, every outgoing
    connection (the tests open thousands) also takes a port, and one could take it before the server binds
    it. Never the same port twice in one process."""
    low = _ephemeral_low()
    while True:
        port = _random.randrange(max(1024, low - 20_000), low)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port


_random = random.SystemRandom()
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def listening_on(name: str) -> re.Pattern[str]:
    """The ready line of scripts/demo_idp.py and scripts/echo_api.py, as a pattern with the groups url, host
    and port: ``<name> listening on http://HOST:PORT``."""
    return re.compile(
        rf"{re.escape(name)} listening on (?P<url>http://(?P<host>\[[^\]]*\]|[^\s:/]+):(?P<port>\d+))"
    )


class ManagedProcess:
    """A started process whose output (stdout and stderr, merged) is drained into memory by a thread,
    so the pipe never fills and blocks it. Use ``start_process`` to make one."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, echo: str | None = None):
        self.args = args
        self.echo = echo  # when set, each line is also printed, prefixed with it (the demo stack's console)
        self.url: str | None = None
        self.port: int | None = None
        self._lines: list[str] = []
        self._eof = False
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=env,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._drain, name=f"drain-{self.proc.pid}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self._lines.append(line)
                if self.echo is not None:
                    print(f"{self.echo}{line}", end="", flush=True)
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def output(self) -> str:
        """Everything the process printed so far, stdout and stderr interleaved."""
        with self._changed:
            return "".join(self._lines)

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = 15) -> re.Match[str]:
        """The first output line matching ``pattern`` (a plain string is a substring). Raises RuntimeError,
        with the output so far, when the process ends or ``timeout`` passes first."""
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self._lines[seen:]:
                    if match := regex.search(line):
                        return match
                seen = len(self._lines)
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    break
                self._changed.wait(left)
        why = (
            f"ended its output (exit code {self._exit_code()})"
            if self._eof
            else f"not ready after {timeout}s"
        )
        raise RuntimeError(f"{self.args!r} {why}, waiting for {regex.pattern!r}; output:\n{self.output()}")

    def _exit_code(self) -> int | None:
        try:
            return self.proc.wait(2)  # closing stdout usually means exiting: give it a moment
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 5) -> int:
        """SIGTERM to the process group, then SIGKILL if it has not exited within ``timeout``.
        Returns the exit code (negative: killed by that signal). Safe to call twice."""
        # Only signal while the process is unreaped: then its PID, hence its group ID, cannot be reused.
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(timeout)
        self._reader.join(timeout)  # the rest of its output
        return self.proc.returncode

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
            os.killpg(self.proc.pid, sig)  # start_new_session: the group ID is the PID

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _url_from(match: re.Match[str]) -> tuple[str | None, int | None]:
    groups = match.groupdict()
    port = int(groups["port"]) if groups.get("port") else None
    if groups.get("url"):
        return groups["url"], port or urlsplit(groups["url"]).port
    if port is None:
        return None, None
    host = groups.get("host") or ""
    return f"http://{'127.0.0.1' if host in _WILDCARDS else host}:{port}", port


def start_process(
    args: list[str],
    ready: str | re.Pattern[str],
    timeout: float = 15,
    env: dict[str, str] | None = None,
    url: str | None = None,
    echo: str | None = None,
) -> ManagedProcess:
    """Start ``args`` and return once a line of its output matches ``ready``.

    ``ready`` is a substring, or a regex whose named groups ``url``, ``host`` and ``port`` (any of them)
    give ``.url`` and ``.port``; a wildcard host becomes 127.0.0.1. Without such groups ``.url`` is None
    unless ``url`` is given, which always wins. ``env`` adds to (does not replace) this process's environment;
    PYTHONUNBUFFERED=1 is set so that Python children (mitmdump too) print their ready line at once.
    If the process exits or ``timeout`` passes first, it is stopped and RuntimeError carries its output.
    """
    full_env = os.environ | {"PYTHONUNBUFFERED": "1"} | (env or {})
    managed = ManagedProcess(args, full_env, echo)
    try:
        match = managed.wait_for(ready, timeout)
    except BaseException:
        managed.stop()
        raise
    managed.url, managed.port = _url_from(match)
    if url is not None:
        managed.url, managed.port = url, urlsplit(url).port or managed.port
    return managed
