"""Duty `discard`: load shedding. The queued jobs of ready lanes a discard rule (or a shed
function answering "discard") takes are cancelled; new jobs of such lanes are refused at
enqueue already."""

from __future__ import annotations

import logging

from worcr_node.dispatch.dispatcher import Dispatcher
from worcr_node.manager import JobManager
from worcr_node.scheduler import Duty
from worcr_node.store.redis_index import RedisIndex

__all__ = ["DiscardShed"]

log = logging.getLogger(__name__)


class DiscardShed:
    def __init__(
        self, manager: JobManager, index: RedisIndex, dispatcher: Dispatcher, every: float = 1.0
    ) -> None:
        self.manager = manager
        self.index = index
        self.dispatcher = dispatcher
        self.every = every

    def duty(self) -> Duty:
        return Duty("discard", self.every, self.run)

    async def run(self) -> int:
        """Returns the jobs cancelled."""
        lanes = self.dispatcher.lanes_to_discard()
        if not lanes:
            return 0
        n = await self.manager.discard_lanes(lanes)
        for lane in lanes:
            await self.index.lane_reset(lane)
            self.dispatcher.forget_lane(lane)
        if n:
            log.info("load shedding: %d queued job(s) of %d lane(s) discarded", n, len(lanes),
                     extra={"action": "discard"})  # fmt: skip
        return n
