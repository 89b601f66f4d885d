"""Real Redis topologies for tests: Sentinel (one master, one replica, three sentinels) and a three-master
Redis Cluster, every process on free loopback ports with its data in a directory of its own.

Both are tuned to fail fast: sentinels call a silent master down after one second and fail over at once; a
cluster node that does not answer for one second is marked failed. Each process is a RedisServer (or, for a
sentinel, a ManagedProcess) and is stopped by its own PID.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import redis
from redis.crc import key_slot

from procs import ManagedProcess, free_port
from redis_server import RedisServer

T = TypeVar("T")

SERVICE = "splittoken"  # the name the sentinels monitor the master under
_SETTLE_TIMEOUT = 30.0  # how long a topology may take to form, or a failover to show


def wait_until[T](what: str, check: Callable[[], T | None], timeout: float = _SETTLE_TIMEOUT) -> T:
    """Poll ``check`` until it answers something truthy (connection errors count as not yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if result := check():
                return result
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def _userinfo(password: str | None) -> str:
    return f":{quote(password, safe='')}@" if password else ""


def _conf_string(value: str) -> str:
    """A redis.conf string argument, quoted so that any character survives."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class SentinelTopology:
    """A master, a replica of it and three sentinels (quorum 2) watching it as SERVICE.

    ``master()`` is whichever server the sentinels call master now; after ``kill()`` of the master, a
    failover makes the replica master, and a restarted old master rejoins as its replica.
    """

    def __init__(self, directory: Path, *, password: str | None = None, down_after_ms: int = 1000) -> None:
        """``down_after_ms``: silence after which the sentinels take the master for dead: short for the
        failover tests; the bench makes it long, so that a master starved of CPU is not failed over."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH: run `make install-system`")
        self.password = password
        self.down_after_ms = down_after_ms
        auth = ["--masterauth", password] if password else []
        # No delay before a diskless full sync (Redis waits 5 s by default for more replicas to join).
        sync = ["--repl-diskless-sync-delay", "0"]
        first = directory / "a"
        second = directory / "b"
        first.mkdir()
        second.mkdir()
        self.servers = [RedisServer(first, password=password, extra_args=[*auth, *sync])]
        self.servers.append(
            RedisServer(
                second,
                password=password,
                extra_args=[*auth, *sync, "--replicaof", "127.0.0.1", str(self.servers[0].port)],
            )
        )
        self._sentinel_dirs = [directory / f"s{i}" for i in range(3)]
        self.sentinel_ports = [free_port() for _ in self._sentinel_dirs]
        self._binary = binary
        self.sentinels: list[ManagedProcess] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{_userinfo(self.password)}{hosts}/{SERVICE}/0"

    def start(self) -> None:
        """Start every process; return once the replica is in sync and every sentinel knows the master, the
        replica and both other sentinels (only then can they agree on a failover)."""
        master, replica = self.servers
        master.start()
        replica.start()
        wait_until("the replica is in sync", lambda: self.client(replica).info("replication")
                   .get("master_link_status") == "up")  # fmt: skip
        for directory, port in zip(self._sentinel_dirs, self.sentinel_ports, strict=True):
            directory.mkdir()
            lines = [
                f"port {port}",
                "bind 127.0.0.1",
                f"dir {_conf_string(str(directory))}",
                f"sentinel monitor {SERVICE} 127.0.0.1 {master.port} 2",
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}",
                f"sentinel failover-timeout {SERVICE} 2000",
            ]
            if self.password:
                lines.append(f"sentinel auth-pass {SERVICE} {_conf_string(self.password)}")
            config = directory / "sentinel.conf"  # each its own: a sentinel rewrites its configuration file
            config.write_text("\n".join(lines) + "\n")
            self.sentinels.append(ManagedProcess([self._binary, str(config), "--sentinel"]))
        for process, port in zip(self.sentinels, self.sentinel_ports, strict=True):
            self._wait_until_informed(process, port)

    @staticmethod
    def _wait_until_informed(process: ManagedProcess, port: int) -> None:
        sentinel = redis.Redis(port=port, socket_timeout=1)

        def informed() -> bool:
            if process.proc.poll() is not None:
                raise RuntimeError(f"sentinel {port} exited; output:\n{process.output()}")
            state = sentinel.sentinel_master(SERVICE)
            return state["num-slaves"] == 1 and state["num-other-sentinels"] == 2

        try:
            wait_until(f"sentinel {port} knows the replica and both other sentinels", informed)
        finally:
            sentinel.close()

    def client(self, server: RedisServer) -> redis.Redis:
        """A plain client straight to one server, bypassing the sentinels."""
        return redis.Redis(port=server.port, password=self.password, socket_timeout=1)

    def _master_port(self) -> int:
        """The master's port according to a majority of the sentinels that answer."""
        ports = []
        for port in self.sentinel_ports:
            sentinel = redis.Redis(port=port, socket_timeout=1)
            try:
                ports.append(int(sentinel.sentinel_get_master_addr_by_name(SERVICE)[1]))
            except redis.RedisError:
                continue
            finally:
                sentinel.close()
        best = max(set(ports), key=ports.count)
        if ports.count(best) < 2:
            raise RuntimeError(f"the sentinels do not agree on a master: {ports}")
        return best

    def master(self) -> RedisServer:
        port = self._master_port()
        return next(server for server in self.servers if server.port == port)

    def replica(self) -> RedisServer:
        port = self._master_port()
        return next(server for server in self.servers if server.port != port)

    def wait_for_failover(self, old: RedisServer) -> RedisServer:
        """The new master, once every sentinel names another server than ``old`` and that server says it is a
        master."""

        def promoted() -> RedisServer | None:
            new = self.master()
            if new is old:
                return None
            client = self.client(new)
            try:
                return new if client.info("replication")["role"] == "master" else None
            finally:
                client.close()

        return wait_until("a replica is promoted", promoted)

    def stop(self) -> None:
        # Sentinels first, so that stopping the servers starts no failover.
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()


class ClusterTopology:
    """Three masters, no replicas, the 16384 slots split among them by ``redis-cli --cluster create``.

    The nodes run with ``cluster-require-full-coverage no``, as production should: a master that is down
    makes only its own slots unavailable. With ``appendonly`` a killed node restarted by ``start()`` comes
    back with its data and its slots.
    """

    def __init__(self, directory: Path, *, password: str | None = None, masters: int = 3) -> None:
        if shutil.which("redis-cli") is None:
            raise RuntimeError("redis-cli is not on PATH: run `make install-system`")
        self.password = password
        self.nodes: list[RedisServer] = []
        for i in range(masters):
            node_dir = directory / f"n{i}"
            node_dir.mkdir()
            args = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(node_dir / "nodes.conf"),
                # A bus port of its own: the default, port + 10000, may be taken or beyond 65535.
                "--cluster-port", str(free_port()),
                "--cluster-node-timeout", "1000",
                "--cluster-require-full-coverage", "no",
            ]  # fmt: skip
            if password:
                args += ["--masterauth", password]
            self.nodes.append(RedisServer(node_dir, appendonly=True, password=password, extra_args=args))

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"redis+cluster://{_userinfo(self.password)}{hosts}"

    def start(self) -> None:
        """Start the nodes, join them into one cluster and return once every node sees all slots served."""
        for node in self.nodes:
            node.start()
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        create = subprocess.run(
            ["redis-cli", *auth, "--cluster", "create", *(f"127.0.0.1:{node.port}" for node in self.nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{create.stdout}\n{create.stderr}")
        for node in self.nodes:
            self.wait_until_served(node)

    def client(self, node: RedisServer) -> redis.Redis:
        """A plain client straight to one node: no redirections, it sees that node's own keys only."""
        return redis.Redis(port=node.port, password=self.password, socket_timeout=1)

    def node_for(self, key: str) -> RedisServer:
        """The master whose slots hold ``key`` (hash tags honoured), by the map a live node keeps."""
        slot = key_slot(key.encode())
        for node in self.nodes:
            client = self.client(node)
            try:
                nodes = client.cluster("nodes")
            except redis.RedisError:
                continue  # a node that is down cannot say; another can
            finally:
                client.close()
            for address, state in nodes.items():
                if any(int(low) <= slot <= int(high) for low, high, *_ in state["slots"]):
                    port = int(address.rpartition(":")[2])
                    return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"no node answers for slot {slot}")

    def keys_on(self, node: RedisServer) -> set[bytes]:
        client = self.client(node)
        try:
            return set(client.scan_iter(count=1000))
        finally:
            client.close()

    def _cluster_info(self, node: RedisServer) -> dict[str, str]:
        client = self.client(node)
        try:
            return client.cluster("info")
        finally:
            client.close()

    def wait_until_served(self, node: RedisServer) -> None:
        """Until ``node`` says the cluster is ok with every slot served by a master that is up."""
        wait_until(f"node {node.port} sees every slot served", lambda: (
            (info := self._cluster_info(node))["cluster_state"] == "ok"
            and int(info["cluster_slots_ok"]) == 16384))  # fmt: skip

    def wait_until_failed(self, dead: RedisServer) -> None:
        """Until every other node has marked ``dead`` as failed (FAIL, not just suspected)."""

        def flagged_everywhere() -> bool:
            for node in self.nodes:
                if node is dead:
                    continue
                client = self.client(node)
                try:
                    nodes = client.cluster("nodes")
                finally:
                    client.close()
                flags = next(v["flags"] for k, v in nodes.items() if k.endswith(f":{dead.port}"))
                if "fail" not in flags.split(","):
                    return False
            return True

        wait_until(f"node {dead.port} is marked failed", flagged_everywhere)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def started[T: (SentinelTopology, ClusterTopology)](topology: T) -> Iterator[T]:
    """For a fixture: ``yield from started(ClusterTopology(...))`` starts it and stops it whatever happens."""
    try:
        topology.start()
        yield topology
    finally:
        topology.stop()


# Helpers of the topology tests.


def far() -> float:
    return time.time() + 600


def key(name: str) -> str:
    """A record key as the vault makes them: SHA-256 hex."""
    return hashlib.sha256(name.encode()).hexdigest()


def bounded_by(limit: float) -> Callable[[Callable[[], T]], T]:
    """A caller of store calls that asserts each returned or raised within ``limit`` seconds."""

    def bounded(call: Callable[[], T]) -> T:
        started_at = time.monotonic()
        try:
            return call()
        finally:
            took = time.monotonic() - started_at
            assert took < limit, f"a store call took {took:.2f}s"

    return bounded
