"""Reconnect/retry delays: exponential, capped, jittered downwards with injected randomness."""

from __future__ import annotations

import pytest

from worcr.backoff import Backoff


def test_exponential_then_capped_without_jitter() -> None:
    backoff = Backoff(base=0.1, factor=2, cap=1.0, jitter=0)
    assert [backoff.delay(n) for n in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert backoff.delay(10_000) == 1.0


def test_jitter_only_shortens() -> None:
    assert Backoff(base=1, cap=10, jitter=0.5, rand=lambda: 0.0).delay(2) == 4.0
    assert Backoff(base=1, cap=10, jitter=0.5, rand=lambda: 1.0).delay(2) == 2.0
    assert Backoff(base=1, cap=3, jitter=1.0, rand=lambda: 0.5).delay(5) == 1.5


@pytest.mark.parametrize("kwargs", [{"base": -1}, {"factor": 0.5}, {"jitter": 1.5}, {"cap": -1}])
def test_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_negative_attempt() -> None:
    with pytest.raises(ValueError, match="attempt"):
        Backoff().delay(-1)
