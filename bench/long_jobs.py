"""Long jobs (issue 5): checkpoint, progress and log updates per second sustained by one node, and
what a checkpoint per item costs a job of 100,000 items.

    .venv/bin/python bench/long_jobs.py             # --repeat 2, ~16 min (most of it `every`)
    .venv/bin/python bench/long_jobs.py --quick     # smoke run, under 1 min

Setup: PostgreSQL (fsync on, synchronous_commit on, track_wal_io_timing on) and Redis on free
loopback ports in a temp dir, and ONE node process (`python -m worcr_node node`): bench/
throughput.py's `Bench`. The node, the SDK worker and the load drivers run a `git archive` copy of
--code (default HEAD; bench/dispatch_scale.py's `snapshot_code`; bench/long_jobs_jobs.py is copied
in from the checkout if the commit lacks it), so edits made to the checkout during the run cannot
mix code versions.

1. updates (--parts updates): how many checkpoint / progress / log requests one node stores per
   second. --jobs (200) jobs of kind `lj.drive` are enqueued; --drivers (2) load-driver processes
   each say `hello` over the raw protocol (worcr.connection.Connection, capacity --jobs/--drivers,
   heartbeats every heartbeat_ms) and take their share of the pushed jobs. Then, for each method,
   every job runs one loop that sends a request and awaits its answer, again and again (one
   request in flight per job, so --jobs requests in flight): `checkpoint` {"next": k},
   `progress` {"items": [k, total]} (NOT coalesced: the point is the node's capacity; the SDK
   sends one per round trip per job), `log` with --log-lines (10) lines of ~70 characters. After
   --warmup (2) s, a --window (10) s is measured, then the loops run 1 s more (PostgreSQL's
   cumulative statistics are flushed up to 1 s late, so the load must be steady on both edges).
   Figures per window:
   - `per_s`: requests answered in the window / its length (log: requests, and `lines_per_s`);
   - `lat_p50_ms`, `lat_p99_ms`: one request, send to answer, as the driver sees it;
   - `node_cpu_us`, `pg_cpu_us`, `redis_cpu_us`, `driver_cpu_us` per request (psutil, children
     included: PostgreSQL's backends, walwriter, autovacuum), and the cores each kept busy;
   - `wal_syncs_per_s`, `wal_sync_ms` (mean), `per_wal_sync` (requests per WAL flush: group
     commit; each batch of the node is one write transaction, one flush unless two share it),
     `commits_per_s` and `per_commit` (pg_stat_database.xact_commit, which also counts the
     read-only reset query asyncpg's pool runs after every use of a connection: about two
     transactions per batch), from pg_stat_wal and pg_stat_database;
   - `other_cores_busy`: CPU used machine-wide by processes outside this run (shared machine).
   sequential (--parts sequential): one job, one checkpoint at a time, the other jobs idle: the
   latency of a lone durable write (`seq_checkpoint_p50_ms`), no group commit to share.
   idle: the drivers hold the jobs and send nothing: the CPU node, PostgreSQL and Redis use at
   rest (duties, heartbeats); `*_cpu_us_net` are the CPU figures above it.
   The windows are interleaved: idle, checkpoint, progress, log, sequential, then again (--repeat
   rounds); medians over the rounds are reported. The drivers then ack their jobs.
2. items (--parts items): the real Python SDK worker (`python -m worcr.worker
   bench.long_jobs_jobs`, concurrency 1) runs one `lj.items` job of --items (100,000) items at a
   time; an item costs --item-us (50) us of CPU: one SHA-256 of a buffer whose size this driver
   calibrates before the part (the `none` variant gives the true cost per item, `item_us`).
   Variants (bench/long_jobs_jobs.py): none, every (a checkpoint per item), every100, progress
   (per item, coalesced by the SDK), none_sleep0 and progress_sleep0 (the same with an
   `await asyncio.sleep(0)` per item, like a job awaiting I/O: only then does the SDK's
   progress task run during the job). One job per variant, interleaved (--variants order, then
   again, --repeat rounds). The handler times its own loop (`elapsed_s`). Reported: per variant
   the median elapsed and `ratio` = elapsed / the same round's `none` (median over rounds);
   `checkpoint_cost_us` = (every - none) / items; the node's, PostgreSQL's and the worker's CPU
   per checkpoint (every - none, less what each uses at rest over the longer run: measured for
   --window / 2 s with the worker connected and idle, after a warm-up job). While a
   job runs, the driver reads its stored progress every 0.25 s (`progress_values_seen`: distinct
   values stored before the end: is progress live?). Checked after each job: completed, and for
   every/every100 the stored checkpoint "next" equals the items, for progress the stored counter.
Progress goes to stderr; the last line of stdout is one JSON object with every figure (also
written to --out). --profile DIR records the node with py-spy in the first round's windows of
part 1, and the node and the worker during the first `every` job (it slows them: use a separate
run for the figures); --pg-stats adds pg_stat_statements' costliest statements to each window.
The hot-path comparison with the issue-4 code is a command sequence (bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import sys
import time
import uuid
from collections import Counter
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.dispatch_scale import fmt, snapshot_code  # noqa: E402
from bench.throughput import (  # noqa: E402
    Bench,
    machine,
    pct,
    say,
    start_profile,
    summarize_profile,
    tree_cpu,
)

DRIVE_KIND = "lj.drive"  # jobs held by the load drivers
ITEMS_KIND = "lj.items"  # bench/long_jobs_jobs.py
ITEMS_LOG = "items.log"  # bench/long_jobs_jobs.ITEMS_LOG (not imported: it imports worcr)
METHODS = ("checkpoint", "progress", "log")
VARIANTS = ("none", "every", "every100", "progress", "none_sleep0", "progress_sleep0")
PARTS = ("updates", "sequential", "items")
TAIL_S = 1.0  # the loops run on after the window (PostgreSQL's statistics lag up to 1 s)
LINE = "item %d: line %d of a long job's output, about seventy characters long, plain"


# -- the load driver (a process of its own) --------------------------------------------------------


def driver_process(pipe: Pipe, address: str, capacity: int, name: str, log_lines: int) -> None:
    """Entry point of a driver process (multiprocessing, spawn)."""
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(Driver(pipe, address, capacity, name, log_lines).main())


class Driver:
    """Holds `capacity` running jobs over one raw protocol connection and, on command, loops
    requests for them: one in flight per job, each awaited."""

    def __init__(self, pipe: Pipe, address: str, capacity: int, name: str, log_lines: int) -> None:
        self.pipe, self.address, self.capacity, self.name = pipe, address, capacity, name
        self.log_lines = log_lines
        self.jobs: list[tuple[str, int]] = []
        self.full = asyncio.Event()
        self.notes: Counter[str] = Counter()
        self.conn: Any = None

    def on_note(self, method: str, params: dict[str, Any]) -> None:
        self.notes[method] += 1
        if method == "jobs":
            self.jobs.extend((j["id"], j["token"]) for j in params["jobs"])
            if len(self.jobs) >= self.capacity:
                self.full.set()

    async def main(self) -> None:
        from worcr.connection import Connection

        self.conn = await Connection.open(self.address, on_notification=self.on_note)
        hello = await self.conn.request(
            "hello",
            {"protocol": 1, "capacity": self.capacity, "kinds": [DRIVE_KIND],
             "worker_id": self.name},
        )  # fmt: skip
        beat = asyncio.create_task(self.heartbeat(hello["heartbeat_ms"] / 1000), name="beat")
        try:
            async with asyncio.timeout(120):
                await self.full.wait()
            self.pipe.send({"ready": len(self.jobs)})
            loop = asyncio.get_running_loop()
            while True:
                cmd = await loop.run_in_executor(None, self.pipe.recv)
                if cmd["cmd"] == "run":
                    self.pipe.send(await self.run(**cmd["args"]))
                else:
                    self.pipe.send(await self.finish())
                    break
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            await self.conn.aclose()

    async def heartbeat(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.conn.notify("heartbeat", {})

    def params(self, method: str, job: tuple[str, int], k: int) -> dict[str, Any]:
        ref: dict[str, Any] = {"id": job[0], "token": job[1]}
        if method == "checkpoint":
            ref["values"] = {"next": k}
        elif method == "progress":
            ref["counters"] = {"items": [k, 1_000_000_000]}
        else:
            now = time.time()
            ref["lines"] = [[now, "info", LINE % (k, j)] for j in range(self.log_lines)]
        return ref

    async def run(
        self, method: str, jobs: int, start: float, lo: float, hi: float, stop: float
    ) -> dict[str, Any]:
        """Loop `method` for the first `jobs` jobs from `start` to `stop`; return the latencies
        of the requests answered in [lo, hi)."""
        from worcr.errors import RemoteError

        lats: list[float] = []
        errors: Counter[str] = Counter()

        async def one(job: tuple[str, int]) -> None:
            await asyncio.sleep(max(0.0, start - time.time()))
            k = 0
            while time.time() < stop:
                k += 1
                t = time.perf_counter()
                try:
                    await self.conn.request(method, self.params(method, job, k))
                except RemoteError as exc:
                    errors[exc.code] += 1
                    if exc.code == "STALE_TOKEN":
                        return
                    continue
                dt = time.perf_counter() - t
                if lo <= time.time() < hi:
                    lats.append(dt)

        await asyncio.gather(*(one(job) for job in self.jobs[:jobs]))
        return {"lat": lats, "errors": dict(errors)}

    async def finish(self) -> dict[str, Any]:
        """Ack every held job, say bye."""
        refused = 0
        for lo in range(0, len(self.jobs), 1000):
            batch = [{"id": i, "token": t} for i, t in self.jobs[lo : lo + 1000]]
            answer = await self.conn.request("ack", {"jobs": batch})
            refused += sum(1 for r in answer["results"] if r is not None)
        await self.conn.request("bye", {})
        return {"acked": len(self.jobs) - refused, "refused": refused, "notes": dict(self.notes)}


# -- the benchmark --------------------------------------------------------------------------------


async def recv(pipe: Pipe, within: float) -> Any:
    """The next message of a driver, without blocking the event loop."""
    loop = asyncio.get_running_loop()
    if not await loop.run_in_executor(None, pipe.poll, within):
        raise TimeoutError(f"no answer from a driver in {within} s")
    return pipe.recv()


async def sleep_until(t: float) -> None:
    await asyncio.sleep(max(0.0, t - time.time()))


def calibrate(item_us: float) -> int:
    """Buffer size whose SHA-256 takes about `item_us` microseconds on this machine."""
    big = bytes(1 << 20)
    t = time.perf_counter()
    for _ in range(20):
        hashlib.sha256(big)
    per_byte = (time.perf_counter() - t) / (20 << 20)
    t = time.perf_counter()
    for _ in range(20_000):
        hashlib.sha256(b"x")
    fixed = (time.perf_counter() - t) / 20_000
    return max(64, int((item_us * 1e-6 - fixed) / per_byte))


def stored_map(value: Any) -> dict[str, Any]:
    """A job's checkpoints as stored: jsonb (text) or, since 09dcbd0, msgpack (bytea)."""
    if not value:
        return {}
    if isinstance(value, bytes):
        import msgpack

        out = msgpack.unpackb(value, raw=False)
    else:
        out = json.loads(value)
    return out if isinstance(out, dict) else {}


def median(xs: list[float | None]) -> float | None:
    ys = [x for x in xs if x is not None]
    return statistics.median(ys) if ys else None


def per(x: float, n: int, scale: float = 1e6) -> float | None:
    return x * scale / n if n else None


class LongJobsBench(Bench):
    job_module = "bench.long_jobs_jobs"

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.drivers: list[tuple[Any, Pipe]] = []
        self.out: dict[str, Any] = {"windows": [], "items": []}
        self.idle: dict[int, dict[str, Any]] = {}  # round -> its idle window

    # services -----------------------------------------------------------------------------------

    async def configure_pg(self) -> None:
        """track_wal_io_timing: the time of each WAL flush (pg_stat_wal.wal_sync_time); with
        --pg-stats also pg_stat_statements (needs a restart)."""
        import asyncpg

        settings = {"track_wal_io_timing": "on"}
        if self.args.pg_stats:
            settings["shared_preload_libraries"] = "pg_stat_statements"
        conn = await asyncpg.connect(self.pg.dsn)
        try:
            for name, value in settings.items():
                await conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()
        if self.args.pg_stats:
            self.pg.restart()
            conn = await asyncpg.connect(self.pg.dsn)
            try:  # known once the library is loaded
                await conn.execute("ALTER SYSTEM SET pg_stat_statements.track_planning = on")
                await conn.execute("SELECT pg_reload_conf()")
            finally:
                await conn.close()

    async def statements(self, db: Any, reset: bool = False) -> list[dict[str, Any]]:
        """--pg-stats: the statements that took the most time since the last reset."""
        if not self.args.pg_stats:
            return []
        if reset:
            await db.execute("SELECT pg_stat_statements_reset()")
            return []
        rows = await db.fetch(
            "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 100) AS q, calls, rows, "
            "mean_exec_time, mean_plan_time, total_exec_time + total_plan_time AS total_ms "
            "FROM pg_stat_statements ORDER BY total_ms DESC LIMIT 6"
        )
        return [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows]

    def start_drivers(self) -> None:
        a = self.args
        ctx = mp.get_context("spawn")
        for k in range(a.drivers):
            cap = a.jobs // a.drivers + (1 if k < a.jobs % a.drivers else 0)
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=driver_process,
                args=(theirs, self.node_addr, cap, f"lj-driver-{k}", a.log_lines),
                name=f"lj-driver-{k}",
                daemon=True,
            )
            proc.start()
            self.drivers.append((proc, ours))

    def stop_all(self) -> None:
        for proc, _pipe in self.drivers:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self.drivers = []
        super().stop_all()

    # samples ------------------------------------------------------------------------------------

    def our_pids(self) -> dict[str, list[int]]:
        return {
            "node": [self.node.pid] if self.node else [],
            "pg": [self.pg.pid or 0],
            "redis": [self.redis.pid or 0],
            "drivers": [p.pid or 0 for p, _ in self.drivers],
            "worker": [w.pid for w in self.workers],
        }

    async def sample(self, db: Any) -> dict[str, Any]:
        """CPU seconds of each process group and of the machine, PostgreSQL's WAL and commits."""
        s: dict[str, Any] = {"t": time.time()}
        for name, pids in self.our_pids().items():
            s[name] = tree_cpu(pids)
        t = psutil.cpu_times()
        busy = sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "steal", 0.0)
        ours = sum(s[k] for k in ("node", "pg", "redis", "drivers", "worker"))
        s["other"] = busy - ours - time.process_time()
        wal = await db.fetchrow("SELECT wal_sync, wal_sync_time FROM pg_stat_wal")
        s["wal_sync"], s["wal_sync_time"] = wal["wal_sync"], wal["wal_sync_time"]
        s["commits"] = await db.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        return s

    # part 1: updates per second ---------------------------------------------------------------

    async def updates_part(self, client: Any, db: Any) -> None:
        a = self.args
        parts = a.parts.split(",")
        say(f"part 1: {a.jobs} jobs held by {a.drivers} driver process(es)")
        await client.enqueue_many([{"kind": DRIVE_KIND, "args": [i]} for i in range(a.jobs)])
        self.start_drivers()
        for _proc, pipe in self.drivers:
            ready = await recv(pipe, 120)
            say(f"  driver ready with {ready['ready']} jobs")
        order = ["idle"] + [m for m in METHODS if "updates" in parts]
        if "sequential" in parts:
            order.append("sequential")
        for rnd in range(a.repeat):
            for name in order:
                await self.window(db, name, rnd)
        ends = [await recv(pipe, 60) for _proc, pipe in self.end_drivers()]
        self.out["drivers_end"] = ends
        for proc, _pipe in self.drivers:
            proc.join(10)
        self.drivers = []

    def end_drivers(self) -> list[tuple[Any, Pipe]]:
        for _proc, pipe in self.drivers:
            pipe.send({"cmd": "end"})
        return self.drivers

    async def window(self, db: Any, name: str, rnd: int) -> None:
        a = self.args
        method = "checkpoint" if name == "sequential" else name
        start = time.time() + 0.3
        lo = start + a.warmup
        hi = lo + a.window
        busy = {"idle": [], "sequential": self.drivers[:1]}.get(name, self.drivers)
        for _proc, pipe in busy:
            jobs = 1 if name == "sequential" else a.jobs
            args = {"method": method, "jobs": jobs, "start": start, "lo": lo, "hi": hi,
                    "stop": hi + TAIL_S}  # fmt: skip
            pipe.send({"cmd": "run", "args": args})
        await sleep_until(lo)
        s0 = await self.sample(db)
        await self.statements(db, reset=True)
        profiler = None
        if a.profile and rnd == 0 and self.node:
            profiler = start_profile(self.profile_dir(name), "node", self.node.pid)
        await sleep_until(hi)
        s1 = await self.sample(db)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
        stmts = await self.statements(db)
        replies = [await recv(pipe, a.window + 60) for _proc, pipe in busy]
        res = self.window_figures(name, rnd, s0, s1, replies)
        if stmts:
            res["statements"] = stmts
        self.out["windows"].append(res)
        if name == "idle":
            self.idle[rnd] = res
            say(
                f"  idle round {rnd + 1} ({len(self.drivers)} drivers holding {a.jobs} jobs): "
                f"cores busy: node {res['node_cores_busy']:.3f}, PostgreSQL "
                f"{res['pg_cores_busy']:.3f}, Redis {res['redis_cores_busy']:.3f}, drivers "
                f"{res['driver_cores_busy']:.3f}; other processes {res['other_cores_busy']:.2f}"
            )
            return
        if profiler is not None:
            self.finish_profile(name, profiler)
        extra = f", {fmt(res['lines_per_s'])} lines/s" if name == "log" else ""
        say(
            f"  {name} round {rnd + 1}: {fmt(res['per_s'])}/s{extra}, latency p50/p99 "
            f"{fmt(res['lat_p50_ms'], 2)}/{fmt(res['lat_p99_ms'], 2)} ms; CPU us per request: "
            f"node {fmt(res['node_cpu_us'])}, PostgreSQL {fmt(res['pg_cpu_us'])}, Redis "
            f"{fmt(res['redis_cpu_us'])}, drivers {fmt(res['driver_cpu_us'])}; "
            f"{fmt(res['per_wal_sync'], 1)} per WAL flush ({fmt(res['wal_sync_ms'], 2)} ms), "
            f"{fmt(res['per_commit'], 1)} per commit; other processes "
            f"{fmt(res['other_cores_busy'], 2)} cores; errors {res['errors'] or 'none'}"
        )

    def window_figures(
        self,
        name: str,
        rnd: int,
        s0: dict[str, Any],
        s1: dict[str, Any],
        replies: list[dict[str, Any]],
    ) -> dict[str, Any]:
        lats = sorted(x for r in replies for x in r["lat"])
        errors: Counter[str] = Counter()
        for r in replies:
            errors.update(r["errors"])
        n, span = len(lats), s1["t"] - s0["t"]
        d = {k: s1[k] - s0[k] for k in s0}
        syncs, commits = d["wal_sync"], d["commits"]
        res: dict[str, Any] = {
            "name": name,
            "round": rnd,
            "n": n,
            "window_s": span,
            "per_s": n / self.args.window,
            "lat_p50_ms": 1000 * p if (p := pct(lats, 0.5)) is not None else None,
            "lat_p99_ms": 1000 * p if (p := pct(lats, 0.99)) is not None else None,
            "lat_mean_ms": 1000 * statistics.fmean(lats) if lats else None,
            "node_cpu_us": per(d["node"], n),
            "pg_cpu_us": per(d["pg"], n),
            "redis_cpu_us": per(d["redis"], n),
            "driver_cpu_us": per(d["drivers"], n),
            "node_cores_busy": d["node"] / span,
            "pg_cores_busy": d["pg"] / span,
            "redis_cores_busy": d["redis"] / span,
            "driver_cores_busy": d["drivers"] / span,
            "other_cores_busy": d["other"] / span,
            "wal_syncs_per_s": syncs / span,
            "wal_sync_ms": d["wal_sync_time"] / syncs if syncs else None,
            "per_wal_sync": n / syncs if syncs else None,
            "commits_per_s": commits / span,
            "per_commit": n / commits if commits else None,
            "errors": dict(errors),
            "loadavg": round(os.getloadavg()[0], 2),
        }
        if name == "log":
            res["lines_per_s"] = res["per_s"] * self.args.log_lines
        idle = self.idle.get(rnd)
        if idle is not None and n:  # CPU per request above what the node uses at rest
            for group, key in (("node", "node"), ("pg", "pg"), ("redis", "redis")):
                rest = idle[f"{key}_cores_busy"] * span
                res[f"{key}_cpu_us_net"] = per(d[group] - rest, n)
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}

    def profile_dir(self, name: str) -> Path:
        out = Path(self.args.profile) / name
        out.mkdir(parents=True, exist_ok=True)
        return out

    def finish_profile(self, name: str, profiler: Any, process: str = "node") -> None:
        try:
            profiler.wait(30)
        except Exception:
            profiler.kill()
        out = self.profile_dir(name)
        summary = summarize_profile(out / f"{process}.collapsed", top=30)
        (out / f"{process}-summary.txt").write_text(summary + "\n")
        print(summary, file=sys.stderr)

    # part 2: a job of many items ----------------------------------------------------------------

    async def items_part(self, client: Any, db: Any) -> None:
        a = self.args
        size = calibrate(a.item_us)
        self.out["item_buffer_bytes"] = size
        say(f"part 2: jobs of {a.items:,} items, ~{a.item_us} us each (SHA-256 of {size:,} B)")
        self.start_workers()
        warm = await self.items_run(client, db, "none", -1, size, a.items // 10)
        s0 = await self.sample(db)
        await asyncio.sleep(a.window / 2)
        s1 = await self.sample(db)
        span = s1["t"] - s0["t"]
        idle = {
            f"{k}_cores_busy": round((s1[k] - s0[k]) / span, 4) for k in ("node", "pg", "worker")
        }
        self.out["items_idle"] = idle
        say(f"  (warm-up job: {warm['state']}); at rest, cores busy: {idle}")
        for rnd in range(a.repeat):
            for mode in a.variants.split(","):
                self.out["items"].append(await self.items_run(client, db, mode, rnd, size))
        self.stop_workers()

    async def items_run(
        self, client: Any, db: Any, mode: str, rnd: int, size: int, n: int = 0
    ) -> dict[str, Any]:
        """One job of the items part, from its enqueue to its end in PostgreSQL."""
        n = n or self.args.items
        tag = f"{mode}-r{rnd}"
        jid = str(uuid.uuid4())
        s0 = await self.sample(db)
        profilers = self.items_profile(mode, rnd)
        args = {"n": n, "size": size, "mode": mode, "tag": tag}
        await client.enqueue_many(
            [{"kind": ITEMS_KIND, "id": jid, "max_attempts": 1, "args": args}]
        )
        seen: set[Any] = set()
        deadline = time.time() + 60 + n * 0.01
        row = None
        while time.time() < deadline:
            row = await db.fetchrow(
                "SELECT state, checkpoints, progress, "
                "extract(epoch FROM finished_at - started_at)::float8 AS job_s "
                "FROM worcr_jobs WHERE id = $1",
                uuid.UUID(jid),
            )
            if row["state"] == "running" and row["progress"]:
                seen.add(json.loads(row["progress"])["items"]["current"])
            if row["state"] not in ("queued", "running", "scheduled"):
                break
            await asyncio.sleep(0.25)
        s1 = await self.sample(db)
        for name, profiler in profilers:
            profiler.send_signal(signal.SIGINT)
            self.finish_profile(f"items-{mode}", profiler, name)
        return self.items_figures(mode, rnd, tag, n, row, seen, s0, s1)

    def items_profile(self, mode: str, rnd: int) -> list[tuple[str, Any]]:
        """--profile: py-spy the node and the worker during the first round's `every` job."""
        if not self.args.profile or rnd != 0 or mode != "every" or not self.node:
            return []
        out = self.profile_dir(f"items-{mode}")
        named = [("node", self.node.pid), ("worker", self.workers[0].pid)]
        return [(name, p) for name, pid in named if (p := start_profile(out, name, pid))]

    def items_line(self, tag: str) -> list[str] | None:
        path = self.logdir / ITEMS_LOG
        if not path.exists():
            return None
        for line in path.read_text().splitlines():
            if line.startswith(tag + " "):
                return line.split()
        return None

    def items_figures(
        self,
        mode: str,
        rnd: int,
        tag: str,
        n: int,
        row: Any,
        seen: set[Any],
        s0: dict[str, Any],
        s1: dict[str, Any],
    ) -> dict[str, Any]:
        line = self.items_line(tag)
        cps = stored_map(row["checkpoints"]) if row else {}
        prog = json.loads(row["progress"]) if row and row["progress"] else {}
        d = {k: s1[k] - s0[k] for k in s0}
        n_items = int(line[2]) if line else 0
        res: dict[str, Any] = {
            "mode": mode,
            "round": rnd,
            "state": row["state"] if row else None,
            "items": n_items,
            "elapsed_s": float(line[5]) if line else None,
            "handler_cpu_s": float(line[6]) if line else None,
            "job_s": row["job_s"] if row else None,
            "checkpoint_next": cps.get("next"),
            "progress_current": prog.get("items", {}).get("current"),
            "progress_values_seen": len(seen),
            "node_cpu_s": d["node"],
            "pg_cpu_s": d["pg"],
            "redis_cpu_s": d["redis"],
            "worker_cpu_s": d["worker"],
            "wal_syncs": d["wal_sync"],
            "wall_s": s1["t"] - s0["t"],
            "other_cores_busy": d["other"] / (s1["t"] - s0["t"]),
            "loadavg": round(os.getloadavg()[0], 2),
        }
        if res["elapsed_s"]:
            res["item_us"] = 1e6 * res["elapsed_s"] / max(1, n_items)
        ok = res["state"] == "completed" and n_items == n
        if mode in ("every", "every100"):
            ok = ok and res["checkpoint_next"] == n
        if mode.startswith("progress"):
            ok = ok and res["progress_current"] == n
        res["ok"] = ok
        say(
            f"  items {tag}: {fmt(res['elapsed_s'], 3)} s ({fmt(res.get('item_us'), 1)} us/item), "
            f"job {fmt(res['job_s'], 3)} s; node {res['node_cpu_s']:.2f} s CPU, PostgreSQL "
            f"{res['pg_cpu_s']:.2f} s, worker {res['worker_cpu_s']:.2f} s; {res['wal_syncs']} WAL "
            f"flushes; checkpoint {res['checkpoint_next']}, progress {res['progress_current']} "
            f"({len(seen)} values seen while running); {'ok' if ok else 'CHECK FAILED'}"
        )
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}

    # the run ------------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        import asyncpg

        from worcr import Client

        a = self.args
        await self.configure_pg()
        await self.create_db()
        db = await asyncpg.connect(self.db_url)
        if a.pg_stats:
            await db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        self.start_node()
        client = await Client.connect(self.node_addr)
        self.out["loadavg_start"] = os.getloadavg()
        try:
            if {"updates", "sequential"} & set(a.parts.split(",")):
                await self.updates_part(client, db)
            if "items" in a.parts.split(","):
                await self.items_part(client, db)
        finally:
            await client.close()
            await db.close()
        self.out["loadavg_end"] = os.getloadavg()
        self.out.update(self.res)
        return self.out


# -- summary --------------------------------------------------------------------------------------


def summarize(out: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    """Medians over the rounds, the headline figures first."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for w in out["windows"]:
        by_name.setdefault(w["name"], []).append(w)
    keys = (
        "per_s",
        "lat_p50_ms",
        "lat_p99_ms",
        "node_cpu_us",
        "pg_cpu_us",
        "redis_cpu_us",
        "node_cpu_us_net",
        "pg_cpu_us_net",
        "redis_cpu_us_net",
        "driver_cpu_us",
        "node_cores_busy",
        "redis_cores_busy",
        "pg_cores_busy",
        "driver_cores_busy",
        "other_cores_busy",
        "wal_syncs_per_s",
        "wal_sync_ms",
        "per_wal_sync",
        "per_commit",
    )
    med = {
        name: {k: rnd(median([w.get(k) for w in ws])) for k in keys} for name, ws in by_name.items()
    }
    head: dict[str, Any] = {
        "checkpoint_per_s": med.get("checkpoint", {}).get("per_s"),
        "progress_per_s": med.get("progress", {}).get("per_s"),
        "log_requests_per_s": med.get("log", {}).get("per_s"),
        "log_lines_per_s": rnd(x * a.log_lines) if (x := med.get("log", {}).get("per_s")) else None,
        "seq_checkpoint_p50_ms": med.get("sequential", {}).get("lat_p50_ms"),
        "seq_checkpoint_p99_ms": med.get("sequential", {}).get("lat_p99_ms"),
    }
    head.update(items_summary(out["items"], out.get("items_idle", {})))
    return {**head, "updates": med}


def items_summary(runs: list[dict[str, Any]], idle: dict[str, float]) -> dict[str, Any]:
    """Per variant: medians over the rounds, and the ratio to the same round's `none`. The CPU
    per checkpoint is net of what the node and PostgreSQL use at rest over the longer run."""
    if not runs:
        return {}
    rounds: dict[int, dict[str, dict[str, Any]]] = {}
    for r in runs:
        rounds.setdefault(r["round"], {})[r["mode"]] = r
    modes = list(dict.fromkeys(r["mode"] for r in runs))
    table: dict[str, Any] = {}
    for mode in modes:
        mine = [rd[mode] for rd in rounds.values() if mode in rd]
        ratios = [
            m["elapsed_s"] / rd["none"]["elapsed_s"]
            for rd in rounds.values()
            if mode in rd and "none" in rd and (m := rd[mode])["elapsed_s"]
            and rd["none"]["elapsed_s"]
        ]  # fmt: skip
        table[mode] = {
            "elapsed_s": rnd(median([m["elapsed_s"] for m in mine])),
            "item_us": rnd(median([m.get("item_us") for m in mine])),
            "ratio": rnd(median(ratios)),
            "ratios": [round(x, 4) for x in ratios],
            "node_cpu_s": rnd(median([m["node_cpu_s"] for m in mine])),
            "pg_cpu_s": rnd(median([m["pg_cpu_s"] for m in mine])),
            "worker_cpu_s": rnd(median([m["worker_cpu_s"] for m in mine])),
            "progress_values_seen": median([m["progress_values_seen"] for m in mine]),
            "all_ok": all(m["ok"] for m in mine),
        }
    out: dict[str, Any] = {"items_variants": table}
    costs, node_us, pg_us, worker_us = [], [], [], []
    for rd in rounds.values():
        if "every" in rd and "none" in rd and rd["every"]["elapsed_s"] and rd["none"]["elapsed_s"]:
            e, z = rd["every"], rd["none"]
            costs.append(1e6 * (e["elapsed_s"] - z["elapsed_s"]) / e["items"])
            longer = e["wall_s"] - z["wall_s"]
            rest_node = idle.get("node_cores_busy", 0.0) * longer
            rest_pg = idle.get("pg_cores_busy", 0.0) * longer
            node_us.append(1e6 * (e["node_cpu_s"] - z["node_cpu_s"] - rest_node) / e["items"])
            pg_us.append(1e6 * (e["pg_cpu_s"] - z["pg_cpu_s"] - rest_pg) / e["items"])
            rest_w = idle.get("worker_cores_busy", 0.0) * longer
            worker_us.append(1e6 * (e["worker_cpu_s"] - z["worker_cpu_s"] - rest_w) / e["items"])
    for mode in ("every", "every100", "progress", "progress_sleep0"):
        out[f"ratio_{mode}"] = table.get(mode, {}).get("ratio")
    out["checkpoint_cost_us"] = rnd(median(costs))
    out["checkpoint_cost_us_rounds"] = [round(x, 1) for x in costs]
    out["checkpoint_node_cpu_us"] = rnd(median(node_us))
    out["checkpoint_pg_cpu_us"] = rnd(median(pg_us))
    out["checkpoint_worker_cpu_us"] = rnd(median(worker_us))
    out["items_checks_ok"] = all(r["ok"] for r in runs)
    return out


def rnd(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


# -- command line ---------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = ap.add_argument
    add("--quick", action="store_true", help="small sizes, under 1 min")
    add("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    add("--jobs", type=int, default=200, help="jobs held by the drivers in part 1 (200)")
    add("--drivers", type=int, default=2, help="load-driver processes (2)")
    add("--log-lines", type=int, default=10, help="lines per log request (10)")
    add("--warmup", type=float, default=2.0, help="seconds before each window (2)")
    add("--window", type=float, default=10.0, help="measured seconds per window (10)")
    add("--items", type=int, default=100_000, help="items of the part-2 job (100000)")
    add("--item-us", type=float, default=50.0, help="CPU per item, microseconds (50)")
    add("--variants", default=",".join(VARIANTS), help="part-2 variants, in run order")
    add("--repeat", type=int, default=2, help="interleaved rounds of each part (2)")
    add(
        "--code",
        default="HEAD",
        metavar="REV",
        help="git revision the node, worker and drivers run ('worktree': the checkout)",
    )
    add(
        "--profile",
        default=None,
        metavar="DIR",
        help="py-spy the node in part 1's first round, node and worker in the first `every`",
    )
    add("--pg-stats", action="store_true", help="pg_stat_statements' top statements per window")
    add("--out", default=None, help="also write the JSON here (results/long_jobs.json)")
    add("--log-level", default="WARNING", help="node and worker log level")
    add("--dir", default=None, help="parent of the temp dirs (default: system temp)")
    add("--keep", action="store_true", help="keep the temp dir (logs, data)")
    a = ap.parse_args()
    if a.quick:
        a.jobs, a.window, a.warmup, a.items, a.repeat = 50, 3.0, 1.0, 5_000, 1
    if a.out is None:
        name = "long_jobs-quick.json" if a.quick else "long_jobs.json"
        a.out = str(ROOT / "bench" / "results" / name)
    bad = [p for p in a.parts.split(",") if p not in PARTS]
    bad += [v for v in a.variants.split(",") if v not in VARIANTS]
    if bad:
        ap.error(f"unknown part(s) or variant(s): {bad}")
    if a.jobs < a.drivers or a.items < 1 or a.repeat < 1:
        ap.error("need --jobs >= --drivers, --items >= 1, --repeat >= 1")
    # bench/throughput.py's Bench reads these: one SDK worker process, one job at a time.
    a.workers, a.concurrency, a.prefetch, a.timeout = 1, 1, None, 600.0
    return a


def main() -> None:
    a = parse_args()
    code, snap = snapshot_code(a)
    if snap is not None and not (snap / "bench" / "long_jobs_jobs.py").exists():
        shutil.copy(ROOT / "bench" / "long_jobs_jobs.py", snap / "bench" / "long_jobs_jobs.py")
        code["jobs_module"] = "copied from the checkout"
    say(f"node, worker and drivers run {code}")
    bench = LongJobsBench(a)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    t0 = time.time()
    out: dict[str, Any] = {}
    try:
        bench.start_services()
        try:
            import uvloop

            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        except ImportError:
            runner = asyncio.Runner()
        with runner:
            out = runner.run(bench.run())
    except KeyboardInterrupt:
        say("interrupted")
    finally:
        bench.stop_all()
        if snap is not None and not a.keep:
            shutil.rmtree(snap, ignore_errors=True)
    res = summarize(out, a) if out else {}
    res.update(
        raw=out,
        **code,
        elapsed_s=round(time.time() - t0),
        machine=machine(),
        command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        settings={k: v for k, v in vars(a).items() if k not in ("out", "dir", "keep")},
    )
    text = json.dumps(res)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text, flush=True)


if __name__ == "__main__":
    main()
