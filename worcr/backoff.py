"""Reconnect and retry delays: capped exponential backoff with jitter.

Used by the producer client (retrying retryable errors), the worker (reconnecting to nodes) and
the result reporter (re-sending refused batches). Randomness is injected so tests are exact.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """Delay before retry number `attempt` (0-based): ``min(cap, base * factor**attempt)``,
    reduced by a random fraction of up to `jitter` (0 = no jitter, 1 = "full jitter").

    Jitter only ever shortens a delay, so `cap` is a true upper bound, and many workers that lost
    the same node do not come back in lockstep.
    """

    __slots__ = ("_rand", "base", "cap", "factor", "jitter")

    def __init__(
        self,
        base: float = 0.1,
        factor: float = 2.0,
        cap: float = 10.0,
        jitter: float = 0.5,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if base < 0 or cap < 0:
            raise ValueError(f"backoff base and cap must be >= 0, got base={base} cap={cap}")
        if factor < 1:
            raise ValueError(f"backoff factor must be >= 1, got {factor}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"backoff jitter must be between 0 and 1, got {jitter}")
        self.base = base
        self.factor = factor
        self.cap = cap
        self.jitter = jitter
        self._rand = rand

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry `attempt` (0 for the first retry)."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        raw = self.cap
        # factor**attempt overflows a float near attempt 1000; the cap is reached long before.
        if attempt < 64:
            raw = min(self.cap, self.base * self.factor**attempt)
        if self.jitter:
            raw -= raw * self.jitter * self._rand()
        return raw

    def __repr__(self) -> str:
        return (
            f"Backoff(base={self.base}, factor={self.factor}, cap={self.cap}, jitter={self.jitter})"
        )
