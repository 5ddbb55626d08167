"""Worcr's Python SDK: enqueue jobs (`Client`, `SyncClient`) and run them (`Worker`, `job`).

Depends only on msgpack and the standard library; it never imports the node. `Worker` is loaded
on first use so that `python -m worcr.worker` runs the module once, as `__main__`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from worcr.backoff import Backoff
from worcr.client import Client
from worcr.context import CancelFlag, JobContext
from worcr.errors import (
    ConnectionClosed,
    ErrorCode,
    FrameTooLarge,
    Permanent,
    RemoteError,
    WorcrError,
    Yield,
)
from worcr.limits import Grant, LimitTimeout
from worcr.registry import Registry, default_registry, job
from worcr.spec import EnqueueResult, JobSpec
from worcr.sync_client import SyncClient

if TYPE_CHECKING:
    from worcr.worker import Worker

__all__ = [
    "Backoff",
    "CancelFlag",
    "Client",
    "ConnectionClosed",
    "EnqueueResult",
    "ErrorCode",
    "FrameTooLarge",
    "Grant",
    "JobContext",
    "JobSpec",
    "LimitTimeout",
    "Permanent",
    "Registry",
    "RemoteError",
    "SyncClient",
    "WorcrError",
    "Worker",
    "Yield",
    "default_registry",
    "job",
]


def __getattr__(name: str) -> Any:
    if name == "Worker":
        from worcr.worker import Worker

        return Worker
    raise AttributeError(f"module 'worcr' has no attribute {name!r}")
