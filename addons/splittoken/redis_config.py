"""What a ``splittoken_store`` Redis URL means: its schemes, hosts and redis-py options, its redacted form,
and the errors by which redis-py says that Redis cannot be reached."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

# AuthenticationError, BusyLoadingError, ResponseError, ... are all RedisError; OSError catches any socket or
# TLS failure that escapes redis-py's own wrapping. RedisClusterException (no master reachable at start-up, a
# slot no master serves) is not a RedisError.
REDIS_ERRORS = (redis.RedisError, redis.RedisClusterException, OSError)

SINGLE_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
_DEFAULT_PORTS = {"sentinel": 26379, "cluster": 6379}
SCHEMES = (*SINGLE_SCHEMES, *SENTINEL_SCHEMES, *CLUSTER_SCHEMES)

# Not urllib's own message, which would quote the bad port: it may be a piece of a mis-encoded password.
_UNREADABLE_HOST = "cannot read host and port (percent-encode / ? # in a password)"


@dataclass
class Clients:
    """The clients a URL asks for, made without I/O."""

    kind: str  # "" (one server), "sentinel" or "cluster"
    options: dict[str, Any]  # the connection options: password, TLS, ...
    redis: redis.Redis | None  # None for a cluster, whose client reads the slot map as it is made
    sentinel: Sentinel | None = None
    cluster: dict[str, Any] | None = None  # RedisCluster's arguments


def make_clients(url: str, timeout: float) -> Clients:
    """The clients for the URL's topology; ValueError or TypeError for a URL redis-py would misread."""
    scheme = url.partition("://")[0]
    kind = scheme.partition("+")[2] if scheme in (*SENTINEL_SCHEMES, *CLUSTER_SCHEMES) else ""
    # One immediate retry on a refused or reset connection, e.g. a pooled socket that died with a Redis
    # restart. Timeouts are not retried: a hung Redis costs one timeout per call, not two.
    retry = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
    sockets = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    # A PING before reusing a connection idle this long: one that a firewall or failover reset while
    # idle is replaced (the retry) rather than failing the request that picks it up.
    health = {"health_check_interval": 30}
    if not kind:
        if scheme not in SINGLE_SCHEMES:
            raise ValueError(f"unknown scheme {scheme}://")
        check_redis_url(url)
        client = redis.Redis.from_url(url, **sockets, **health, retry=retry)
        pool = client.connection_pool
        # Connections are built lazily: build one now (no I/O) so that an unknown ?option fails at
        # start-up rather than as a TypeError on every request.
        pool.connection_class(**pool.connection_kwargs)
        return Clients(kind, pool.connection_kwargs, client)
    nodes, service, options = multi_host_options(url, kind)
    check_options(options)
    if kind == "cluster":
        cluster = {
            "startup_nodes": [ClusterNode(host, port) for host, port in nodes],
            "require_full_coverage": False,  # slots of a dead master are simply not served; others are
            "retry": retry, **sockets, **options,
        }  # fmt: skip
        return Clients(kind, options, None, cluster=cluster)
    tls = {k: v for k, v in options.items() if k.startswith("ssl")}
    once = Retry(NoBackoff(), 0)  # no retry when asking a sentinel: the next sentinel is the retry
    sentinel = Sentinel(
        nodes, sentinel_kwargs={**sockets, **tls, "retry": once},
        **{**sockets, **health, **options}, retry=retry,
    )  # fmt: skip
    connection_class = SentinelTLSConnection if options["ssl"] else SentinelConnection
    return Clients(kind, options, sentinel.master_for(service, connection_class=connection_class), sentinel)


def redact_redis_url(url: str) -> str:
    """The URL with any password (userinfo or ``?password=``) replaced by ***, safe to log.

    Works on the raw string rather than urlsplit, which mis-splits a password holding a raw / ? or #
    and would then leave part of it in clear. Several hosts (Sentinel, Cluster) share the one userinfo.
    """
    url = re.sub(r"([?&]password=)[^&#]*", r"\1***", url)
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.partition(':')[0]}:***@{hostpart}"


def check_redis_url(url: str) -> None:
    """Refuse what redis-py would misread silently (no host means localhost, a bad db path means db 0)."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # the property raises for a port that is not a number in 0..65535
    except ValueError:
        raise ValueError(_UNREADABLE_HOST) from None
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("unix:// needs a socket path")
        return
    if not parts.hostname:
        raise ValueError("no host")
    db = unquote(parts.path).strip("/")
    if db and not db.isdigit():
        raise ValueError(f"the path must be a database number, not {db!r}")


def multi_host_options(url: str, kind: str) -> tuple[list[tuple[str, int]], str, dict[str, Any]]:
    """Hosts, the Sentinel service name ('' for a cluster) and redis-py connection options of a
    ``redis[s]+sentinel://`` or ``redis[s]+cluster://`` URL.

    The query, password and database go through redis-py's own URL parser, so the options are exactly those
    a ``redis://`` URL takes.
    """
    parts = urlsplit(url)
    if parts.fragment:
        raise ValueError("a '#' (percent-encode it in a password)")
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    nodes = [_node(item, kind) for item in hostlist.split(",")]
    service, db = _service_and_db(unquote(parts.path), kind)
    base = "rediss" if parts.scheme.startswith("rediss") else "redis"
    query = f"?{parts.query}" if parts.query else ""
    options = redis.connection.parse_url(f"{base}://{userinfo}{at}{hostlist.split(',')[0]}/{db}{query}")
    del options["host"]
    options.pop("port", None)
    options.pop("connection_class", None)  # both Sentinel and Cluster choose their own class from ssl
    options["ssl"] = base == "rediss"
    if kind == "cluster" and options.pop("db", 0) != 0:
        raise ValueError("Redis Cluster has only database 0")
    return nodes, service, options


def _node(item: str, kind: str) -> tuple[str, int]:
    try:
        node = urlsplit("//" + item)
        host, port = node.hostname, node.port
    except ValueError:
        raise ValueError(_UNREADABLE_HOST) from None
    if not host:
        raise ValueError("a host is missing (host:port[,host:port…])")
    return host, port or _DEFAULT_PORTS[kind]


def _service_and_db(path: str, kind: str) -> tuple[str, str]:
    if kind == "cluster":
        if path.strip("/"):
            raise ValueError("a path: Redis Cluster has one database and the URL names none")
        return "", ""
    service, _, db = path.removeprefix("/").partition("/")
    db = db.removesuffix("/")
    if not service:
        raise ValueError("no service name (redis+sentinel://host:port[,host:port…]/<service-name>[/<db>])")
    if db and not db.isdigit():
        raise ValueError(f"the path after the service name must be a database number, not {db!r}")
    return service, db


def check_options(options: dict[str, Any]) -> None:
    """Build a connection (no I/O) so that an unknown ?option fails at start-up, not on every request."""
    plain = {k: v for k, v in options.items() if k != "ssl"}
    (redis.SSLConnection if options["ssl"] else redis.Connection)(**plain)


class SentinelConnection(SentinelManagedConnection):
    """A connection to the master that is closed when a read fails, as every other redis-py connection is.

    redis-py 8.1's Sentinel connection alone keeps its socket after a read timeout (its read_response
    defaults to disconnect_on_error=False): the pool then hands the same socket out again, so calls keep
    waiting on a frozen master long after the sentinels promoted a replica (never following it), and the
    late reply to a timed-out command could be read as the answer to the next one.
    """

    def read_response(self, *args: Any, disconnect_on_error: bool = True, **kwargs: Any) -> Any:
        return super().read_response(*args, disconnect_on_error=disconnect_on_error, **kwargs)


class SentinelTLSConnection(SentinelConnection, redis.SSLConnection):
    pass
