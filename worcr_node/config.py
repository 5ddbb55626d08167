"""Node configuration from environment variables.

Read once at start. A bad value stops the node with a ConfigError naming the variable and what is
expected. The table of variables is in README.md and docs/operations.md.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from worcr.wire import Limits

__all__ = ["Config", "ConfigError", "HostPort"]


class ConfigError(Exception):
    """A configuration value is missing or malformed; the message says which and how to fix it."""


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Config:
    database_url: str = "postgresql://postgres@127.0.0.1:5432/worcr"
    redis_url: str = "redis://127.0.0.1:6379/0"
    http: HostPort = field(default_factory=lambda: HostPort("127.0.0.1", 7400))
    listen: HostPort = field(default_factory=lambda: HostPort("127.0.0.1", 7401))
    node_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    redis_prefix: str = "worcr"
    token: str | None = None
    heartbeat_ms: int = 1000
    yield_grace: int = 30  # seconds a worker asked to yield has before its lease is revoked
    log_retention: int = 7 * 86400  # seconds job log lines are kept
    lane_window: int = 500
    window_budget: int = 100_000  # job ids in all lane windows together (Redis memory bound)
    db_pool_size: int = 8
    function_time_ms: int = 50  # CPU time one function call may take
    function_memory_mb: int = 32  # memory of one function's sandbox
    http_body_timeout: int = 30  # seconds an HTTP request body may take to arrive whole
    http_body_budget_mb: int = 64  # MiB of large HTTP request bodies held at once (node-wide)
    limits: Limits = field(default_factory=Limits)

    def with_(self, **changes: object) -> Config:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        base = cls()
        return cls(
            database_url=_url(
                env, "WORCR_DATABASE_URL", base.database_url, ("postgresql", "postgres")
            ),
            redis_url=_url(env, "WORCR_REDIS_URL", base.redis_url, ("redis", "rediss", "unix")),
            http=_host_port(env, "WORCR_HTTP", base.http),
            listen=_host_port(env, "WORCR_LISTEN", base.listen),
            node_id=_name(env, "WORCR_NODE_ID", base.node_id),
            redis_prefix=_name(env, "WORCR_REDIS_PREFIX", base.redis_prefix),
            token=env.get("WORCR_TOKEN") or None,
            heartbeat_ms=_int(env, "WORCR_HEARTBEAT_MS", base.heartbeat_ms, 50, 60_000),
            yield_grace=_int(env, "WORCR_YIELD_GRACE", base.yield_grace, 0, 86400),
            log_retention=_int(
                env, "WORCR_LOG_RETENTION", base.log_retention, 60, 10 * 365 * 86400
            ),
            limits=Limits(
                max_log_lines=_int(
                    env, "WORCR_MAX_LOG_LINES", base.limits.max_log_lines, 0, 100_000_000
                ),
                hello_timeout=_int(env, "WORCR_HELLO_TIMEOUT", base.limits.hello_timeout, 1, 3600),
                max_connections=_int(
                    env, "WORCR_MAX_CONNECTIONS", base.limits.max_connections, 1, 1_000_000
                ),
                max_connections_per_ip=_int(
                    env,
                    "WORCR_MAX_CONNECTIONS_PER_IP",
                    base.limits.max_connections_per_ip,
                    1,
                    1_000_000,
                ),
            ),
            lane_window=_int(env, "WORCR_LANE_WINDOW", base.lane_window, 10, 100_000),
            window_budget=_int(env, "WORCR_WINDOW_BUDGET", base.window_budget, 1000, 10_000_000),
            db_pool_size=_int(env, "WORCR_DB_POOL", base.db_pool_size, 2, 200),
            function_time_ms=_int(env, "WORCR_FUNCTION_TIME_MS", base.function_time_ms, 1, 10_000),
            function_memory_mb=_int(
                env, "WORCR_FUNCTION_MEMORY_MB", base.function_memory_mb, 1, 4096
            ),
            http_body_timeout=_int(env, "WORCR_HTTP_BODY_TIMEOUT", base.http_body_timeout, 1, 3600),
            http_body_budget_mb=_int(
                env, "WORCR_HTTP_BODY_BUDGET_MB", base.http_body_budget_mb, 8, 65536
            ),
        )


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


def _name(env: Mapping[str, str], var: str, default: str) -> str:
    value = env.get(var)
    if value is None or value == "":
        return default
    if not _NAME.match(value):
        raise ConfigError(
            f"{var}={value!r} is not valid: expected 1-128 characters of letters, digits, "
            "'_', '.', ':' or '-', starting with a letter or digit"
        )
    return value


def _url(env: Mapping[str, str], var: str, default: str, schemes: tuple[str, ...]) -> str:
    value = env.get(var)
    if value is None or value == "":
        return default
    parts = urlsplit(value)
    if parts.scheme not in schemes or not (parts.netloc or parts.path):
        raise ConfigError(
            f"{var}={value!r} is not valid: expected a URL starting with "
            + " or ".join(f"{s}://" for s in schemes)
        )
    return value


def _host_port(env: Mapping[str, str], var: str, default: HostPort) -> HostPort:
    value = env.get(var)
    if value is None or value == "":
        return default
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(
            f"{var}={value!r} is not valid: expected HOST:PORT, e.g. 127.0.0.1:7400 "
            "(port 0 picks a free port)"
        )
    return HostPort(host, int(port_text))


def _int(env: Mapping[str, str], var: str, default: int, low: int, high: int) -> int:
    value = env.get(var)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise ConfigError(f"{var}={value!r} is not valid: expected an integer from {low} to {high}")
    return number
