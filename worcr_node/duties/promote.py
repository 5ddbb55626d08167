"""Duty `promote`: scheduled jobs whose `run_at` came, and retrying jobs whose backoff is over,
become queued (and their lanes ready), a thousand at a time (`JobManager.promote_due`)."""

from __future__ import annotations

from worcr_node.manager import JobManager
from worcr_node.scheduler import Duty

__all__ = ["PromoteDue"]


class PromoteDue:
    def __init__(self, manager: JobManager, every: float = 0.2) -> None:
        self.manager = manager
        self.every = every

    def duty(self) -> Duty:
        return Duty("promote", self.every, self.run)

    async def run(self) -> None:
        while await self.manager.promote_due(1000) == 1000:
            pass
