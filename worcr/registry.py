"""Job kinds and their handlers: which function runs a pushed job, and whether it is async.

Each `Worker` has a `Registry`; the module-level `worcr.job` decorator registers into
`default_registry`, which `worcr worker some.module` uses when the module defines no `worker`.
Whether a handler is a coroutine function is decided once, here, not per job.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from worcr.wire import Limits

__all__ = ["Handler", "Registry", "default_registry", "job"]

LIMITS = Limits()  # defaults are readable on an instance only: Limits has __slots__

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Handler:
    kind: str
    fn: Callable[..., Any]
    is_async: bool


class Registry:
    """Maps job kinds to handlers."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(
        self, kind: str, fn: Callable[..., Any], *, is_async: bool | None = None
    ) -> Handler:
        """Register `fn` for `kind`. `async def` handlers (detected, or `is_async=True`) run on
        the event loop; others run in the worker's thread pool."""
        if not isinstance(kind, str) or not kind or len(kind) > LIMITS.max_kind_len:
            raise ValueError(
                f"a job kind must be a non-empty str of at most {LIMITS.max_kind_len} characters,"
                f" got {kind!r}"
            )
        if not callable(fn):
            raise TypeError(f"the handler for {kind!r} must be callable, got {fn!r}")
        existing = self._handlers.get(kind)
        if existing is not None and existing.fn is not fn:
            raise ValueError(f"job kind {kind!r} already has a handler ({existing.fn!r})")
        if is_async is None:
            is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
                getattr(fn, "__call__", None)  # noqa: B004 - an instance with `async def __call__`
            )
        handler = Handler(kind, fn, is_async)
        self._handlers[kind] = handler
        return handler

    def job(self, kind: str, *, is_async: bool | None = None) -> Callable[[F], F]:
        """Decorator form of `register`: `@registry.job("email.send")`."""
        if callable(kind):
            raise TypeError('give the job kind: @job("kind"), not a bare @job')

        def decorate(fn: F) -> F:
            self.register(kind, fn, is_async=is_async)
            return fn

        return decorate

    def get(self, kind: str) -> Handler | None:
        return self._handlers.get(kind)

    def kinds(self) -> list[str]:
        return sorted(self._handlers)

    def merge(self, other: Registry) -> None:
        """Add the handlers of `other` whose kind is not registered here."""
        for kind, handler in other._handlers.items():
            if kind not in self._handlers:
                self._handlers[kind] = handler

    def __contains__(self, kind: object) -> bool:
        return kind in self._handlers

    def __len__(self) -> int:
        return len(self._handlers)

    def __iter__(self) -> Iterator[Handler]:
        return iter(list(self._handlers.values()))


default_registry = Registry()


def job(kind: str, *, is_async: bool | None = None) -> Callable[[F], F]:
    """Register a handler in the default registry: `@worcr.job("email.send")`."""
    return default_registry.job(kind, is_async=is_async)
