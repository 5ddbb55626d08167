"""Duty `expire`: waiting jobs (scheduled, queued, retrying) whose `expires_at` passed end as
`expired`, a thousand at a time (`JobManager.expire_due`)."""

from __future__ import annotations

from worcr_node.manager import JobManager
from worcr_node.scheduler import Duty

__all__ = ["ExpireJobs"]


class ExpireJobs:
    def __init__(self, manager: JobManager, every: float = 1.0) -> None:
        self.manager = manager
        self.every = every

    def duty(self) -> Duty:
        return Duty("expire", self.every, self.run)

    async def run(self) -> int:
        return await self.manager.expire_due()
