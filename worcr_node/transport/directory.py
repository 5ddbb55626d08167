"""Which worker link holds each attempt this node handed out: the one place cancel and yield
asks (`StopAttempts`, `YieldAttempts` on the bus) look up, instead of a scan of every connection.

A link (today a TCP `Session`; a WebSocket or HTTP-push link later) records an attempt when it
pushes the job or adopts it at `hello`, and forgets it when the worker reports it, when it is
cancelled, or when the link closes. An attempt is a job id and its lease token: a job dispatched
again (a new token) replaces the old entry, and an ask for the old token finds nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

__all__ = ["AttemptDirectory"]

L = TypeVar("L")


class AttemptDirectory(Generic[L]):
    def __init__(self) -> None:
        self._by_job: dict[str, tuple[L, int]] = {}

    def __len__(self) -> int:
        return len(self._by_job)

    def hold(self, job_id: str, token: int, link: L) -> None:
        self._by_job[job_id] = (link, token)

    def release(self, job_id: str, link: L) -> None:
        """The link no longer holds the job (only if it is the one recorded)."""
        found = self._by_job.get(job_id)
        if found is not None and found[0] is link:
            del self._by_job[job_id]

    def release_all(self, link: L, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            self.release(job_id, link)

    def holders(self, attempts: Sequence[tuple[str, int]]) -> dict[L, list[tuple[str, int]]]:
        """The links holding these attempts (job id, token), each with its own."""
        out: dict[L, list[tuple[str, int]]] = {}
        for job_id, token in attempts:
            found = self._by_job.get(job_id)
            if found is not None and found[1] == token:
                out.setdefault(found[0], []).append((job_id, token))
        return out
