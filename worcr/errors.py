"""Exceptions of the SDK: what a producer or a job handler can catch or raise.

`RemoteError` (an error answered by the node) comes from `worcr.wire` and is re-exported here so
that SDK users find every exception in one place.
"""

from __future__ import annotations

from worcr.wire import ErrorCode, RemoteError

__all__ = [
    "ConnectionClosed",
    "ErrorCode",
    "FrameTooLarge",
    "Permanent",
    "RemoteError",
    "WorcrError",
    "Yield",
]


class WorcrError(Exception):
    """Base class of the SDK's own exceptions (node answers are `RemoteError`)."""


class ConnectionClosed(WorcrError, ConnectionError):
    """The connection to the node closed; requests still in flight fail with this.

    `code` is the error code the node announced before closing (an `error` notification), if any.
    """

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class FrameTooLarge(WorcrError, ValueError):
    """A message would exceed the frame limit; it was not sent."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes is over the frame limit of {limit} bytes")
        self.size = size
        self.limit = limit


class Permanent(Exception):
    """Raise from a job handler to fail the job without retrying it.

    Any exception with a class attribute `retryable = False` has the same effect.
    """

    retryable = False


class Yield(Exception):
    """Raise from a job handler to give the job back without failing it: it goes back to ready
    at once, keeps its checkpoints, and the attempt does not count toward `max_attempts`.

    The way for a handler running in a thread to honour `ctx.yield_requested`.
    """
