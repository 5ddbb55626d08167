"""Wiring: builds the node's services from a Config, starts them in order, stops them in reverse.

store (PostgreSQL) + index (Redis) -> manager -> dispatcher, duties -> transports (TCP, HTTP).
If any service task crashes, the node stops cleanly (`crashed` is set).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from worcr_node.bus import Bus
from worcr_node.clock import Clock, SystemClock
from worcr_node.config import Config
from worcr_node.dispatch.dispatcher import Dispatcher
from worcr_node.dispatch.policy import Policy, PolicyStore, PolicyWatcher
from worcr_node.duties.expiry import ExpireJobs
from worcr_node.duties.lane_split import SplitLanes
from worcr_node.duties.leases import ExpireLeases
from worcr_node.duties.log_retention import LogRetention
from worcr_node.duties.promote import PromoteDue
from worcr_node.duties.rebuild import RedisRebuild
from worcr_node.duties.run_time import RunTime
from worcr_node.duties.shedding import DiscardShed
from worcr_node.duties.usage import PruneUsage
from worcr_node.functions.errors import FunctionErrorLog
from worcr_node.functions.host import ProcessHost
from worcr_node.functions.runner import FunctionRunner
from worcr_node.functions.sandbox import Caps
from worcr_node.http.api import build_app
from worcr_node.http.edge import ServerLog
from worcr_node.life.events import EventStreams
from worcr_node.life.writer import JobLife
from worcr_node.limits.rate import RateLimiter
from worcr_node.listen import listen_error
from worcr_node.manager import JobManager
from worcr_node.messages import (
    JobEvents,
    LanesReady,
    PolicyChanged,
    StopAttempts,
    UnitsFreed,
    YieldAttempts,
)
from worcr_node.scheduler import DutyScheduler
from worcr_node.service import Service
from worcr_node.store.life import LifeStore
from worcr_node.store.pg import PgStore
from worcr_node.store.redis_index import RedisIndex
from worcr_node.transport.session import Hub
from worcr_node.transport.tcp import TcpServer

__all__ = ["Node"]

log = logging.getLogger(__name__)


class Node:
    def __init__(
        self,
        config: Config,
        clock: Clock | None = None,
        rand: Callable[[], float] = random.random,
        duty_periods: dict[str, float] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.store = PgStore(config.database_url, config.db_pool_size)
        self.index = RedisIndex(config.redis_url, config.redis_prefix, config.lane_window)
        # every message between nodes (messages.py); the store publishes ready lanes itself
        self.bus = Bus(self.index, self.index.sender)
        self.manager = JobManager(
            self.store, self.index, config.node_id, self.clock, config.limits, self.bus, rand
        )
        self.function_errors = FunctionErrorLog(self.store, config.node_id)
        caps = Caps(config.function_time_ms / 1000, config.function_memory_mb << 20)
        # user functions run in a child process, never on this event loop (functions/host.py)
        self.functions = FunctionRunner(caps, self.function_errors.record, ProcessHost(caps))
        self.dispatcher = Dispatcher(
            self.manager,
            self.store,
            self.index,
            self.clock,
            3 * config.heartbeat_ms / 1000,
            config.window_budget,
            self.functions,
        )
        self.policy_store = PolicyStore(self.store, self.bus)
        every = duty_periods or {}  # seconds between runs, by duty name (tests)
        self.rebuild = RedisRebuild(
            self.store, self.index, self.dispatcher, self.clock, self.bus,
            **{f"{k}_every": every[k] for k in ("reconcile", "epoch") if k in every},
        )  # fmt: skip
        self.policy = PolicyWatcher(self.policy_store, self._policy_changed)
        self.hub = Hub(
            self.manager,
            config.node_id,
            self.clock,
            config.limits,
            config.heartbeat_ms,
            config.token,
            self.dispatcher.add,
            self.dispatcher.remove,
            self.dispatcher.wake,
        )
        self.events = EventStreams(self.index, self.bus)
        self.manager.on_states = self.events.publish_states
        self.life_store = LifeStore(self.store)
        self.life = JobLife(self.life_store, self.events, config.limits)
        self.hub.life = self.life
        self.run_time = RunTime(
            self.manager, self.life_store, self.bus, config.yield_grace, every.get("run-time", 1.0)
        )
        self.log_retention = LogRetention(
            self.life_store, self.clock, config.log_retention, every.get("retention", 60.0)
        )
        self.rate = RateLimiter(self.index, self.store, lambda: self.dispatcher.limits, self.bus)
        self.hub.rate = self.rate
        self._hear()
        self.tcp = TcpServer(self.hub, config.listen)
        self.http_port = config.http.port
        self._runner: web.AppRunner | None = None
        self.crashed = asyncio.Event()
        self.drain_timeout = 15.0  # seconds a stop waits for claims under way to reach workers
        self.prune_usage = PruneUsage(self.index, self.dispatcher, every.get("usage", 60.0))
        self.scheduler = DutyScheduler([
            PromoteDue(self.manager, every.get("promote", 0.2)).duty(),
            ExpireLeases(self.index, self.manager, self.clock, every.get("leases", 0.2)).duty(),
            ExpireJobs(self.manager, every.get("expire", 1.0)).duty(),
            SplitLanes(self.store, self.index, self.dispatcher, every.get("split", 0.5)).duty(),
            DiscardShed(self.manager, self.index, self.dispatcher,
                        every.get("discard", 1.0)).duty(),
            self.prune_usage.duty(),
            *self.rebuild.duties(),
            self.run_time.duty(),
            self.log_retention.duty(),
        ])  # fmt: skip
        self._services: list[Service] = [
            self.bus, self.policy, self.events, self.function_errors, self.dispatcher,
            self.rebuild, self.scheduler, self.tcp,
        ]  # fmt: skip
        for s in self._services:
            s.on_crash = self._on_crash

    def _hear(self) -> None:
        """Who hears which message of the bus (this node's and the other nodes')."""
        bus = self.bus
        bus.subscribe(LanesReady, lambda m: self.dispatcher.lanes_ready(m.heads))
        bus.subscribe(UnitsFreed, lambda m: self.dispatcher.freed(m.keys))
        bus.subscribe(UnitsFreed, lambda m: self.rate.freed(m.keys))
        bus.subscribe(StopAttempts, lambda m: self.hub.cancel_jobs(m.attempts, m.reason))
        bus.subscribe(YieldAttempts, lambda m: self.hub.ask_yield(m.attempts, m.reason))
        bus.subscribe(PolicyChanged, lambda m: self.policy.nudge())
        bus.subscribe(JobEvents, self.events.deliver)

    def _policy_changed(self, policy: Policy) -> None:
        self.dispatcher.set_policy(policy)
        if self.rebuild.started:
            self.rebuild.policy_changed()

    def _on_crash(self, name: str, exc: BaseException) -> None:
        log.error("service task %s died: stopping the node", name, extra={"action": "crash"})
        self.crashed.set()

    async def start(self) -> None:
        await self.store.open()
        for s in self._services:
            await s.start()
        app = build_app(self.manager, self.config.token, self.policy_store, self.dispatcher,
                        self.life_store, self.events, self.functions,
                        body_timeout=self.config.http_body_timeout,
                        body_budget=self.config.http_body_budget_mb << 20)  # fmt: skip
        # ServerLog: a malformed request is one INFO line, not a traceback at ERROR (edge.py)
        self._runner = web.AppRunner(app, access_log=None, logger=ServerLog())
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.http.host, self.config.http.port)
        try:
            await site.start()
        except OSError as exc:
            raise listen_error("the HTTP API", self.config.http, "WORCR_HTTP", exc) from None
        server = site._server
        if server is not None and getattr(server, "sockets", None):
            self.http_port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        log.info("node %s up: http %s:%d, workers %s:%d", self.config.node_id,
                 self.config.http.host, self.http_port, self.config.listen.host, self.tcp.port,
                 extra={"action": "start"})  # fmt: skip

    async def stop(self) -> None:
        """Stop taking work, hand out what was claimed, close connections (workers fail over and
        report elsewhere), flush batches, close stores."""
        self.hub.shutting_down = True
        self.tcp.stop_accepting()
        # Jobs claimed for a worker reach it (or come back at once as yielded) before the
        # connections close: none is left running for a worker that never got it.
        await _bounded("dispatch drain", self.dispatcher.drain(), self.drain_timeout)
        if self._runner is not None:
            await _bounded("http", self._runner.cleanup(), 10)
            self._runner = None
        for s in reversed(self._services):
            await _bounded(s.name, s.stop(), 10)
        await _bounded("batches", self.manager.close(), 35)
        await _bounded("job-life batches", self.life.close(), 10)
        await _bounded("function process", self.functions.close(), 5)
        await _bounded("redis", self.index.close(), 5)
        await _bounded("postgresql", self.store.close(), 10)

    @property
    def worker_address(self) -> str:
        return f"{self.config.listen.host}:{self.tcp.port}"

    @property
    def http_address(self) -> str:
        return f"http://{self.config.http.host}:{self.http_port}"


async def _bounded(what: str, coro: Coroutine[Any, Any, Any], seconds: float) -> None:
    """One shutdown step; a step that hangs is logged and abandoned so the node still stops."""
    try:
        async with asyncio.timeout(seconds):
            await coro
    except TimeoutError:
        log.error("shutdown: %s did not stop within %.0f s", what, seconds,
                  extra={"action": "stop"})  # fmt: skip
