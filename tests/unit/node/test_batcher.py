from __future__ import annotations

import asyncio

import pytest

from worcr_node.batcher import Batcher


async def test_concurrent_submits_share_one_flush_and_get_their_own_results() -> None:
    flushes: list[list[int]] = []
    gate = asyncio.Event()

    async def flush(items: list[int]) -> list[int]:
        flushes.append(list(items))
        await gate.wait()
        return [i * 10 for i in items]

    b = Batcher[int, int]("t", flush)
    first = asyncio.create_task(b.submit([1]))
    await asyncio.sleep(0)  # the first flush is in flight
    rest = [asyncio.create_task(b.submit([i, i + 100])) for i in (2, 3)]
    await asyncio.sleep(0)
    gate.set()
    assert await first == [10]
    assert [await r for r in rest] == [[20, 1020], [30, 1030]]
    assert flushes == [[1], [2, 102, 3, 103]]


async def test_max_batch_splits_and_errors_reach_only_their_callers() -> None:
    calls: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        calls.append(items)
        if 99 in items:
            raise RuntimeError("boom")
        return items

    b = Batcher[int, int]("t", flush, max_batch=1)
    results = await asyncio.gather(
        b.submit([1, 2]), b.submit([99]), b.submit([3]), return_exceptions=True
    )
    assert results[0] == [1, 2]  # one request larger than max_batch goes alone, whole
    assert isinstance(results[1], RuntimeError)
    assert results[2] == [3]
    assert calls == [[1, 2], [99], [3]]
    await b.close()
    with pytest.raises(RuntimeError, match="closed"):
        await b.submit([4])
