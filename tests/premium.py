"""The documented premium example (docs/dispatch.md) as rule bodies, shared by the tests:
"a job tagged premium on a worker tagged premium has weight x10; a job without premium never runs
on a premium worker"."""

from __future__ import annotations

from typing import Any

PREMIUM_X10: dict[str, Any] = {
    "name": "premium x10",
    "match": {"job_tags": {"all": ["premium"]}, "worker_tags": {"all": ["premium"]}},
    "action": "multiply",
    "factor": 10,
}
PREMIUM_ONLY: dict[str, Any] = {
    "name": "premium workers only run premium jobs",
    "match": {"job_tags": {"none": ["premium"]}, "worker_tags": {"all": ["premium"]}},
    "action": "forbid",
}
