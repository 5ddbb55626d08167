"""Handler registration: kinds, async detection, mistakes."""

from __future__ import annotations

from typing import Any

import pytest

from worcr.registry import Registry


async def async_handler(ctx: Any) -> None: ...


def sync_handler(ctx: Any) -> None: ...


class AsyncCallable:
    async def __call__(self, ctx: Any) -> None: ...


def test_register_detects_async_handlers() -> None:
    registry = Registry()
    assert registry.register("a", async_handler).is_async
    assert not registry.register("s", sync_handler).is_async
    assert registry.register("c", AsyncCallable()).is_async
    assert registry.register("forced", sync_handler, is_async=True).is_async
    assert registry.kinds() == ["a", "c", "forced", "s"]
    assert "a" in registry
    assert len(registry) == 4
    assert registry.get("missing") is None


def test_decorator_returns_the_function() -> None:
    registry = Registry()

    @registry.job("email.send")
    def send(ctx: Any) -> None: ...

    assert registry.get("email.send") is not None
    assert send.__name__ == "send"


def test_mistakes() -> None:
    registry = Registry()
    registry.register("k", sync_handler)
    registry.register("k", sync_handler)  # the same function again is harmless
    with pytest.raises(ValueError, match="already has a handler"):
        registry.register("k", async_handler)
    with pytest.raises(ValueError, match="non-empty str"):
        registry.register("", sync_handler)
    with pytest.raises(TypeError, match="callable"):
        registry.register("x", 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bare @job"):
        registry.job(sync_handler)  # type: ignore[arg-type]


def test_merge_keeps_existing_kinds() -> None:
    mine, other = Registry(), Registry()
    mine.register("k", sync_handler)
    other.register("k", async_handler)
    other.register("extra", async_handler)
    mine.merge(other)
    assert mine.kinds() == ["extra", "k"]
    handler = mine.get("k")
    assert handler is not None
    assert handler.fn is sync_handler
