"""The node's settings as an operator reads them: every `WORCR_*` variable, its default and what
it does, shown by `worcr node --help` (and `worcr dev --help`). `config.py` reads them;
tests/unit/node/test_settings.py keeps this list, config.py and README's table in step."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SETTINGS", "Setting", "settings_help"]


@dataclass(frozen=True, slots=True)
class Setting:
    variable: str
    default: str
    meaning: str


SETTINGS: tuple[Setting, ...] = (
    Setting("WORCR_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/worcr",
            "PostgreSQL, the truth; migrations run at start"),
    Setting("WORCR_REDIS_URL", "redis://127.0.0.1:6379/0", "Redis, the index"),
    Setting("WORCR_HTTP", "127.0.0.1:7400", "HTTP API address (port 0: a free one)"),
    Setting("WORCR_LISTEN", "127.0.0.1:7401", "worker protocol (TCP) address"),
    Setting("WORCR_NODE_ID", "<hostname>-<pid>", "this node's name in attempts and logs"),
    Setting("WORCR_TOKEN", "none", "if set, workers and HTTP clients must present it"),
    Setting("WORCR_REDIS_PREFIX", "worcr", "key prefix in Redis"),
    Setting("WORCR_HEARTBEAT_MS", "1000", "how often workers heartbeat"),
    Setting("WORCR_LANE_WINDOW", "500", "job ids per lane kept in Redis"),
    Setting("WORCR_WINDOW_BUDGET", "100000", "job ids in all lane windows together"),
    Setting("WORCR_DB_POOL", "8", "PostgreSQL connections per node"),
    Setting("WORCR_YIELD_GRACE", "30", "seconds to yield a job past its run time, then revoked"),
    Setting("WORCR_LOG_RETENTION", "604800", "seconds job log lines are kept"),
    Setting("WORCR_MAX_LOG_LINES", "100000", "log lines stored per attempt"),
    Setting("WORCR_HELLO_TIMEOUT", "10", "seconds a worker connection has to say hello"),
    Setting("WORCR_MAX_CONNECTIONS", "4096", "worker connections in total"),
    Setting("WORCR_MAX_CONNECTIONS_PER_IP", "256", "worker connections from one IP address"),
    Setting("WORCR_FUNCTION_TIME_MS", "50", "CPU time of one embedded function call"),
    Setting("WORCR_FUNCTION_MEMORY_MB", "32", "memory of one embedded function"),
    Setting("WORCR_HTTP_BODY_TIMEOUT", "30", "seconds an HTTP request body has to arrive"),
    Setting("WORCR_HTTP_BODY_BUDGET_MB", "64", "MiB of large HTTP bodies handled at once"),
    Setting("WORCR_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR"),
)  # fmt: skip


def settings_help() -> str:
    """The settings as a help epilog: one line each."""
    width = max(len(s.variable) for s in SETTINGS)
    lines = ["settings (environment variables; README.md, Configuration, says more):"]
    for s in SETTINGS:
        lines.append(f"  {s.variable:<{width}}  {s.meaning} (default {s.default})")
    return "\n".join(lines)
