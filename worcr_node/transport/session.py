"""A worker or producer session: the wire protocol's methods as a table of small handlers.

A session is transport-agnostic (it is given a `send` function for encoded frames and a `close`
function). It validates every message, calls the manager, and is the dispatcher's Consumer: it
knows the worker's capacity and the jobs it holds, and extends their leases on heartbeats.

Before a hello succeeds a session accepts only small frames (`max_hello_frame`) and answers every
other method `NOT_AUTHENTICATED` without dispatching it; the transport's hello deadline calls
`hello_due`. Error messages quote at most `max_echo` characters of what the client sent.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgpack

from worcr import wire
from worcr.wire import ErrorCode, Limits, MsgType, ProtocolError, RemoteError
from worcr_node.clock import Clock
from worcr_node.jobspec import MAX_RESERVE_FOR, MIN_RESERVE_FOR, SpecError, pack_value
from worcr_node.life.model import (
    LifeError,
    parse_checkpoints,
    parse_log_lines,
    parse_progress,
    parse_seq,
)
from worcr_node.life.writer import JobLife, Written
from worcr_node.limits.rate import RateLimiter, RateLimitError
from worcr_node.manager import JobManager
from worcr_node.outcome import FailReport
from worcr_node.store.pg import ClaimedJob, StorageUnavailable
from worcr_node.store.redis_index import IndexUnavailable
from worcr_node.transport.directory import AttemptDirectory

__all__ = ["Hub", "Session"]

log = logging.getLogger(__name__)

Handler = Callable[["Session", dict[str, Any]], Awaitable[Any]]


MAX_MESSAGE = 1024  # characters of an error message sent (a net under every error's own text)


def _bad(message: str) -> RemoteError:
    return RemoteError(ErrorCode.BAD_REQUEST, message)


def _error_frame(msgid: int, exc: RemoteError) -> bytes:
    error = exc.to_wire()
    error["message"] = error["message"][:MAX_MESSAGE]
    return wire.response(msgid, error, None)


def _str_list(params: dict[str, Any], name: str, max_items: int, max_len: int) -> list[str]:
    value = params.get(name) or []
    if not isinstance(value, list) or len(value) > max_items:
        raise _bad(f"{name}: expected a list of at most {max_items} strings")
    for v in value:
        if not isinstance(v, str) or not v or len(v) > max_len or not v.isprintable():
            raise _bad(f"{name}: each item must be a printable string of 1-{max_len} characters")
    return value


def _job_refs(params: dict[str, Any], limits: Limits) -> list[dict[str, Any]]:
    jobs = params.get("jobs")
    if not isinstance(jobs, list) or not 1 <= len(jobs) <= limits.max_batch:
        raise _bad(f"jobs: expected a list of 1 to {limits.max_batch} items")
    for j in jobs:
        if not isinstance(j, dict):
            raise _bad("jobs: each item must be a map with id and token")
        if not isinstance(j.get("id"), str):
            raise _bad("jobs[].id: expected a UUID string")
        token = j.get("token")
        if isinstance(token, bool) or not isinstance(token, int) or not 0 < token < 1 << 63:
            raise _bad("jobs[].token: expected a positive integer")
        try:
            j["_uuid"] = uuid.UUID(j["id"])
        except ValueError:
            raise _bad(f"jobs[].id: {wire.quote(j['id'], limits.max_echo)} is not a UUID") from None
        j["id"] = str(j["_uuid"])  # one spelling, whatever case or braces the client used
        rf = j.get("reserve_for")
        if rf is not None and (
            isinstance(rf, bool)
            or not isinstance(rf, int | float)
            or not MIN_RESERVE_FOR <= rf <= MAX_RESERVE_FOR
        ):
            raise _bad(f"jobs[].reserve_for: expected seconds from {MIN_RESERVE_FOR} to "
                       f"{MAX_RESERVE_FOR}")  # fmt: skip
    return jobs


def _stale(job_id: str) -> dict[str, Any]:
    return RemoteError(
        ErrorCode.STALE_TOKEN,
        f"job {job_id}: this attempt no longer holds the job (lease expired, cancelled or "
        "already reported); its result was not recorded",
    ).to_wire()


class Hub:
    """What sessions share: the manager, the dispatcher, the node's sessions."""

    def __init__(
        self,
        manager: JobManager,
        node_id: str,
        clock: Clock,
        limits: Limits,
        heartbeat_ms: int,
        token: str | None,
        add_consumer: Callable[[Session], None],
        remove_consumer: Callable[[Session], None],
        wake_dispatch: Callable[[], None],
    ) -> None:
        self.manager = manager
        self.node_id = node_id
        self.clock = clock
        self.limits = limits
        self.heartbeat_ms = heartbeat_ms
        self.token = token
        self.add_consumer = add_consumer
        self.remove_consumer = remove_consumer
        self.wake_dispatch = wake_dispatch
        self.sessions: set[Session] = set()
        self.attempts: AttemptDirectory[Session] = AttemptDirectory()  # who holds which attempt
        self.shutting_down = False
        self.rate: RateLimiter | None = None  # set by the node
        self.life: JobLife | None = None  # set by the node

    def _holders(self, jobs: Sequence[tuple[str, int]]) -> dict[Session, list[dict[str, Any]]]:
        """The sessions holding these attempts (by id and token: the job may have been dispatched
        again meanwhile, here, to another session)."""
        return {s: [{"id": job_id, "token": token} for job_id, token in refs]
                for s, refs in self.attempts.holders(jobs).items()}  # fmt: skip

    def cancel_jobs(self, jobs: Sequence[tuple[str, int]], reason: str = "cancelled") -> None:
        """Tell the workers holding these attempts to stop them (and not report them)."""
        for s, refs in self._holders(jobs).items():
            for ref in refs:
                s.forget(ref["id"])
            s.send(wire.notification("cancel", {"jobs": refs, "reason": reason}))

    def ask_yield(self, jobs: Sequence[tuple[str, int]], reason: str = "max_run_time") -> None:
        """Ask the workers holding these attempts to yield them (checkpoint and give back)."""
        for s, refs in self._holders(jobs).items():
            s.send(wire.notification("yield", {"jobs": refs, "reason": reason}))


class Session:
    def __init__(
        self, hub: Hub, send: Callable[[bytes], None], close: Callable[[], None], peer: str
    ) -> None:
        self.hub = hub
        self.send = send
        self._close = close
        self.peer = peer
        self.worker_id = ""
        self.kinds: frozenset[str] = frozenset()
        self.tags: list[str] = []
        self.capacity = 0
        self.reserved = 0
        self.held_jobs: dict[str, tuple[int, float]] = {}  # id -> (token, reserve_for)
        # Jobs the worker has reported (ack/fail/yield being committed): still leased and
        # heartbeat-extended until the commit, but no longer using the worker's capacity.
        self.reporting: set[str] = set()
        self.authenticated = False
        self.open = True
        self.refusing = False  # the node stops: new requests are answered SHUTTING_DOWN
        self._tasks: set[asyncio.Task[None]] = set()
        self._hellos = 0  # hello requests being handled
        self._hello_late = False  # the hello deadline passed while one was being handled
        # Small frames until a hello succeeds: an unknown peer cannot make the node buffer much.
        self.decoder = wire.FrameDecoder(hub.limits.max_hello_frame)
        hub.sessions.add(self)

    @property
    def held(self) -> int:
        return len(self.held_jobs) - len(self.reporting)

    def release_credit(self, refs: list[dict[str, Any]]) -> None:
        """The worker finished these jobs: free their capacity now, before the commit."""
        for r in refs:
            held = self.held_jobs.get(r["id"])
            if held is not None and held[0] == r["token"]:
                self.reporting.add(r["id"])
        self.hub.wake_dispatch()

    # -- input -------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.decoder.feed(data)
        except ProtocolError as exc:
            self.fatal(exc.code, exc.message)
            return
        for msg in messages:
            if not self.open:
                return
            self._message(msg)

    def _message(self, msg: list[Any]) -> None:
        kind = msg[0]
        if kind == MsgType.REQUEST:
            if not self.authenticated and msg[2] != "hello":  # before any method lookup
                self.send(_error_frame(msg[1], _NOT_AUTHENTICATED))
                return
            if self.refusing:  # not applied: the client sends it again to another node
                self.send(_error_frame(msg[1], _SHUTTING_DOWN))
                return
            if len(self._tasks) >= self.hub.limits.max_in_flight_requests:
                self.send(_error_frame(msg[1], _TOO_MANY_IN_FLIGHT))
                return
            task = asyncio.get_running_loop().create_task(self._request(msg[1], msg[2], msg[3]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif kind == MsgType.NOTIFICATION:
            if msg[1] == "heartbeat" and self.authenticated:
                self.heartbeat()
            # other notifications from clients are ignored (forward compatible)
        # responses: the node sends no requests yet; ignore

    async def _request(self, msgid: int, method: str, params: dict[str, Any]) -> None:
        hello = method == "hello"
        self._hellos += int(hello)
        try:
            frame = wire.response(msgid, None, await self._handle(method, params))
        except RemoteError as exc:
            frame = _error_frame(msgid, exc)
        finally:
            self._hellos -= int(hello)
        if self.open:
            self.send(frame)
        if hello and self._hello_late and not self.authenticated and not self._hellos:
            self.hello_due()  # the deadline passed during this refused hello: close now

    async def _handle(self, method: str, params: dict[str, Any]) -> Any:
        """The method's result; every failure as a RemoteError."""
        handler = HANDLERS.get(method)
        try:
            if handler is None:
                raise RemoteError(ErrorCode.UNKNOWN_METHOD, f"unknown method {wire.quote(method)}")
            return await handler(self, params)
        except RemoteError:
            raise
        except (SpecError, LifeError) as exc:
            raise _bad(str(exc)) from None
        except RateLimitError as exc:
            raise RemoteError(exc.code, exc.message) from None
        except (StorageUnavailable, IndexUnavailable) as exc:
            raise RemoteError(
                ErrorCode.UNAVAILABLE, f"storage unavailable, retry: {exc}", True
            ) from None
        except Exception as exc:
            log.exception("request %s failed", method, extra={"action": "request"})
            raise RemoteError(ErrorCode.INTERNAL, f"{type(exc).__name__}") from None

    def requests_under_way(self) -> list[asyncio.Task[None]]:
        return [t for t in self._tasks if not t.done()]

    def hello_due(self) -> None:
        """The hello deadline passed: close the connection unless a hello succeeded. A hello being
        handled (PostgreSQL may be slow) is waited for; if it is refused, the connection closes."""
        if self.authenticated or not self.open:
            return
        self._hello_late = True
        if not self._hellos:
            self.fatal(
                ErrorCode.NOT_AUTHENTICATED,
                f"no hello within {self.hub.limits.hello_timeout} s of connecting",
            )

    def fatal(self, code: str, message: str) -> None:
        log.info("closing %s: %s %s", self.peer, code, message, extra={"action": "protocol_error"})
        if self.open:
            self.send(wire.notification("error", {"code": code, "message": message}))
        self.close()

    def close(self) -> None:
        if not self.open:
            return
        self.open = False
        self._close()
        self.connection_lost()

    def connection_lost(self) -> None:
        """The worker is gone; its jobs keep their leases until they expire (it may reconnect)."""
        self.open = False
        self.hub.sessions.discard(self)
        self.hub.attempts.release_all(self, self.held_jobs)
        self.hub.remove_consumer(self)
        for t in self._tasks:
            t.cancel()

    # -- consumer ----------------------------------------------------------------------------------

    def deliver(self, jobs: Sequence[ClaimedJob]) -> bool:
        if not self.open or self.capacity == 0:
            return False
        out: list[dict[str, Any]] = []
        size = 0
        budget = self.hub.limits.max_frame - (64 << 10)  # room for the frame's other fields
        for j in jobs:
            weight = len(j.args) + 512 + (len(j.checkpoints) if j.checkpoints else 0)
            if out and size + weight > budget:  # stay under the frame limit
                self.send(encode_jobs(out))
                out, size = [], 0
            size += weight
            jid = str(j.id)
            self.hold(jid, j.token, j.reserve_for)
            job: dict[str, Any] = {
                "id": jid,
                "token": j.token,
                "kind": j.kind,
                "args": _Raw(j.args),
                "tags": j.tags,
                "tenant": j.tenant,
                "attempt": j.attempt,
                "max_attempts": j.max_attempts,
                "reserve_for": j.reserve_for,
                "enqueued_at": j.enqueued_at,
            }
            if j.checkpoints is not None:
                job["checkpoints"] = _Raw(j.checkpoints)
            out.append(job)
        self.send(encode_jobs(out))
        return True

    def hold(self, job_id: str, token: int, reserve_for: float) -> None:
        """The worker has this attempt (pushed, or adopted at hello)."""
        self.held_jobs[job_id] = (token, reserve_for)
        self.hub.attempts.hold(job_id, token, self)

    def forget(self, job_id: str) -> None:
        self.reporting.discard(job_id)
        self.held_jobs.pop(job_id, None)
        self.hub.attempts.release(job_id, self)

    def heartbeat(self) -> None:
        if not self.held_jobs:
            return
        now_ms = int(self.hub.clock.now() * 1000)
        floor = 3 * self.hub.heartbeat_ms  # a lease always outlives three missed heartbeats
        deadlines = {
            jid: now_ms + max(int(rf * 1000), floor) for jid, (_t, rf) in self.held_jobs.items()
        }
        task = asyncio.get_running_loop().create_task(self._extend(deadlines))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _extend(self, deadlines: dict[str, int]) -> None:
        try:
            await self.hub.manager.index.lease_extend(deadlines)
        except IndexUnavailable as exc:
            log.warning("heartbeat not recorded: %s", exc)


_NOT_AUTHENTICATED = RemoteError(ErrorCode.NOT_AUTHENTICATED, "send hello first")
_TOO_MANY_IN_FLIGHT = RemoteError(
    ErrorCode.BAD_REQUEST, "too many requests in flight: wait for answers", True
)
_SHUTTING_DOWN = RemoteError(
    ErrorCode.SHUTTING_DOWN, "node is stopping: send it to another node", True
)


class _Raw:
    """Job args already msgpack-encoded in storage: spliced into the frame as they are."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def encode_jobs(jobs: list[dict[str, Any]]) -> bytes:
    # Encode each job map by hand so the stored msgpack args are copied, not decoded and re-encoded.
    packer = msgpack.Packer(use_bin_type=True)
    parts = [
        packer.pack_array_header(3),
        packer.pack(int(MsgType.NOTIFICATION)),
        packer.pack("jobs"),
        packer.pack_map_header(1),
        packer.pack("jobs"),
        packer.pack_array_header(len(jobs)),
    ]
    for job in jobs:
        parts.append(packer.pack_map_header(len(job)))
        for key, value in job.items():
            parts.append(packer.pack(key))
            parts.append(value.data if isinstance(value, _Raw) else packer.pack(value))
    body = b"".join(parts)
    return wire.HEADER.pack(len(body)) + body


# -- handlers --------------------------------------------------------------------------------------


async def on_hello(s: Session, p: dict[str, Any]) -> dict[str, Any]:
    hub = s.hub
    if s.authenticated:
        raise _bad("hello was already sent on this connection")
    version = p.get("protocol")
    if type(version) is not int or version != wire.PROTOCOL_VERSION:
        raise RemoteError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"protocol {wire.quote(version)} is not supported; this node speaks "
            f"{wire.PROTOCOL_VERSION}",
        )
    if hub.token is not None and p.get("token") != hub.token:
        raise RemoteError(ErrorCode.UNAUTHORIZED, "missing or wrong token")
    if hub.shutting_down:
        raise RemoteError(ErrorCode.SHUTTING_DOWN, "node is shutting down", True)
    limits = hub.limits
    worker_id = p.get("worker_id") or f"anon-{uuid.uuid4().hex[:12]}"
    if not isinstance(worker_id, str) or len(worker_id) > 128 or not worker_id.isprintable():
        raise _bad("worker_id: expected a printable string of at most 128 characters")
    capacity = p.get("capacity", 0)
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise _bad("capacity: expected an integer")
    if not 0 <= capacity <= limits.max_capacity:
        raise _bad(f"capacity: must be from 0 to {limits.max_capacity}")
    tags = _str_list(p, "tags", limits.max_tags, limits.max_tag_len)
    kinds = _str_list(p, "kinds", 10_000, limits.max_kind_len)
    running = p.get("running") or []
    refs = _job_refs({"jobs": running}, limits) if running else []
    refs, stale = await _current(hub, refs)
    s.worker_id = worker_id
    s.tags = tags
    s.kinds = frozenset(kinds)
    s.capacity = capacity
    s.authenticated = True
    s.decoder.max_frame = limits.max_frame  # a worker's frames may now be full size
    for ref in refs:  # adopted: their leases are extended at once and on every heartbeat
        s.hold(ref["id"], ref["token"], float(ref.get("reserve_for") or 60.0))
    if refs:
        s.heartbeat()
    if capacity:
        hub.add_consumer(s)
    answer = {
        "node_id": hub.node_id,
        "session": uuid.uuid4().hex,
        "worker_id": worker_id,
        "heartbeat_ms": hub.heartbeat_ms,
        "limits": {
            "max_frame": limits.max_frame,
            "max_args": limits.max_args,
            "max_result": limits.max_result,
            "max_batch": limits.max_batch,
            "max_tags": limits.max_tags,
        },
    }
    if running and stale is not None:
        answer["stale"] = stale
    return answer


async def _current(
    hub: Hub, refs: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[str] | None]:
    """Of a reconnecting worker's jobs, those still running as these attempts, and the ids of
    the others (None if PostgreSQL cannot tell now: then all are adopted, rather than let their
    leases lapse while the worker runs them)."""
    if not refs:
        return refs, []
    assert hub.life is not None
    try:
        current = await hub.life.store.attempts_running([(r["_uuid"], r["token"]) for r in refs])
    except StorageUnavailable:
        return refs, None
    stale = [r["id"] for r in refs if (r["_uuid"], r["token"]) not in current]
    return [r for r in refs if (r["_uuid"], r["token"]) in current], stale


async def on_enqueue(s: Session, p: dict[str, Any]) -> dict[str, Any]:
    jobs = p.get("jobs")
    if not isinstance(jobs, list):
        raise _bad("jobs: expected a list of job specs")
    results = await s.hub.manager.enqueue(jobs)
    return {
        "jobs": [{"id": str(r.id), "state": r.state, "duplicate": r.duplicate} for r in results]
    }


async def on_ack(s: Session, p: dict[str, Any]) -> dict[str, Any]:
    refs = _job_refs(p, s.hub.limits)
    items = []
    limits = s.hub.limits
    for r in refs:
        result = r.get("result")
        packed = (
            None
            if result is None
            else pack_value(result, "jobs[].result", limits.max_result, limits.max_depth)
        )
        items.append((r["_uuid"], r["token"], packed))
    s.release_credit(refs)
    ok = await s.hub.manager.ack(items)
    return report_results(s, refs, ok)


async def on_fail(s: Session, p: dict[str, Any]) -> dict[str, Any]:
    refs = _job_refs(p, s.hub.limits)
    limits = s.hub.limits
    items = []
    for r in refs:
        error = r.get("error")
        backtrace = r.get("backtrace")
        retryable = r.get("retryable", True)
        if not isinstance(error, str):
            raise _bad("jobs[].error: expected a string")
        if backtrace is not None and not isinstance(backtrace, str):
            raise _bad("jobs[].backtrace: expected a string")
        if not isinstance(retryable, bool):
            raise _bad("jobs[].retryable: expected a boolean")
        items.append(
            FailReport(
                r["_uuid"],
                r["token"],
                error[: limits.max_error_len],
                backtrace[: limits.max_backtrace_len] if backtrace else None,
                retryable,
            )
        )
    s.release_credit(refs)
    ok = await s.hub.manager.fail(items)
    return report_results(s, refs, ok)


async def on_yield(s: Session, p: dict[str, Any]) -> dict[str, Any]:
    refs = _job_refs(p, s.hub.limits)
    ok = await s.hub.manager.yield_([(r["_uuid"], r["token"]) for r in refs])
    return report_results(s, refs, ok)


def report_results(s: Session, refs: list[dict[str, Any]], ok: list[bool]) -> dict[str, Any]:
    out: list[dict[str, Any] | None] = []
    for r, good in zip(refs, ok, strict=True):
        held = s.held_jobs.get(r["id"])
        if held is not None and held[0] == r["token"]:
            s.forget(r["id"])
        out.append(None if good else _stale(r["id"]))
    s.hub.wake_dispatch()
    return {"results": out}


async def on_capacity(s: Session, p: dict[str, Any]) -> dict[str, Any]:
    capacity = p.get("capacity")
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise _bad("capacity: expected an integer")
    if not 0 <= capacity <= s.hub.limits.max_capacity:
        raise _bad(f"capacity: must be from 0 to {s.hub.limits.max_capacity}")
    was = s.capacity
    s.capacity = capacity
    if capacity and not was:
        s.hub.add_consumer(s)
    s.hub.wake_dispatch()
    return {}


async def on_heartbeat(s: Session, p: dict[str, Any]) -> dict[str, Any]:
    s.heartbeat()
    return {}


async def on_bye(s: Session, p: dict[str, Any]) -> dict[str, Any]:
    s.capacity = 0
    return {}


def _limit_ref(s: Session, p: dict[str, Any]) -> tuple[uuid.UUID, int, str, str | None, int]:
    """(job id, token, limit name, key or None, units) of an acquire or release."""
    refs = _job_refs({"jobs": [{"id": p.get("id"), "token": p.get("token")}]}, s.hub.limits)
    name = p.get("limit")
    if not isinstance(name, str) or not name or len(name) > 128:
        raise _bad("limit: expected the name of a rate limit")
    key = p.get("key")
    if key is not None and not isinstance(key, str):
        raise _bad("key: expected a string")
    units = p.get("units", 1)
    if isinstance(units, bool) or not isinstance(units, int) or not 1 <= units <= 1_000_000:
        raise _bad("units: expected an integer from 1 to 1000000")
    return refs[0]["_uuid"], refs[0]["token"], name, key, units


async def _running_attempt(s: Session, job_id: uuid.UUID, token: int) -> Any:
    """The (id, token) must be the job's current running attempt; returns the job's row if it
    had to be read (the attempt is not one this connection holds), else None."""
    held = s.held_jobs.get(str(job_id))
    if held is not None and held[0] == token:
        return None
    row = await s.hub.manager.store.job_get(job_id)
    if row is None or row["state"] != "running" or row["lease_token"] != token:
        raise RemoteError(ErrorCode.STALE_TOKEN, f"job {job_id}: this attempt is not running")
    return row


async def on_acquire(s: Session, p: dict[str, Any]) -> dict[str, Any]:
    job_id, token, name, key, units = _limit_ref(s, p)
    wait = p.get("wait", 0)
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= 60:
        raise _bad("wait: expected seconds from 0 to 60")
    assert s.hub.rate is not None
    row = await _running_attempt(s, job_id, token)
    grant = await s.hub.rate.acquire(job_id, token, name, key, units, float(wait), row)
    return grant.to_wire()


async def on_release(s: Session, p: dict[str, Any]) -> dict[str, Any]:
    job_id, token, name, key, units = _limit_ref(s, p)
    assert s.hub.rate is not None
    row = await _running_attempt(s, job_id, token)
    return {"released": await s.hub.rate.release(job_id, token, name, key, units, row)}


def _attempt(s: Session, p: dict[str, Any]) -> tuple[uuid.UUID, int]:
    refs = _job_refs({"jobs": [{"id": p.get("id"), "token": p.get("token")}]}, s.hub.limits)
    return refs[0]["_uuid"], refs[0]["token"]


def _life(s: Session) -> JobLife:
    assert s.hub.life is not None  # set by the node before it listens
    return s.hub.life


def _check_written(out: Written, job_id: uuid.UUID, what: str, limit: int) -> None:
    if out == Written.STALE:
        raise RemoteError(
            ErrorCode.STALE_TOKEN,
            f"job {job_id}: this attempt no longer holds the job; its {what} were not stored",
        )
    if out == Written.TOO_LARGE:
        raise _bad(f"job {job_id}: its {what} would exceed {limit} bytes; not stored")


async def on_checkpoint(s: Session, p: dict[str, Any]) -> dict[str, Any]:
    job_id, token = _attempt(s, p)
    put, drop = parse_checkpoints(p.get("values"), s.hub.limits)
    out = await _life(s).checkpoint(job_id, token, put, drop, parse_seq(p.get("seq")))
    _check_written(out, job_id, "checkpoints", s.hub.limits.max_checkpoints)
    return {}


async def on_progress(s: Session, p: dict[str, Any]) -> dict[str, Any]:
    job_id, token = _attempt(s, p)
    put = parse_progress(p.get("counters"), s.hub.clock.now(), s.hub.limits)
    out = await _life(s).progress(job_id, token, put)
    _check_written(out, job_id, "progress counters", s.hub.limits.max_progress)
    return {}


async def on_log(s: Session, p: dict[str, Any]) -> dict[str, Any]:
    job_id, token = _attempt(s, p)
    lines = parse_log_lines(p.get("lines"), s.hub.clock.now(), s.hub.limits)
    stored = await _life(s).log(job_id, token, lines)
    if stored is None:
        raise RemoteError(
            ErrorCode.STALE_TOKEN,
            f"job {job_id}: this attempt no longer holds the job; its log lines were not stored",
        )
    return {"stored": stored}


HANDLERS: dict[str, Handler] = {
    "hello": on_hello,
    "enqueue": on_enqueue,
    "ack": on_ack,
    "fail": on_fail,
    "yield": on_yield,
    "capacity": on_capacity,
    "heartbeat": on_heartbeat,
    "bye": on_bye,
    "acquire": on_acquire,
    "release": on_release,
    "checkpoint": on_checkpoint,
    "progress": on_progress,
    "log": on_log,
}
