"""Worcr throughput benchmark: one node, W worker processes, no-op jobs, everything durable.

    .venv/bin/python bench/throughput.py     # --jobs 20000 --workers 2 --backlog 1000000
    .venv/bin/python bench/throughput.py --jobs 5000 --backlog 100000 --profile /tmp/prof

It starts its own PostgreSQL (fsync on, synchronous_commit on: an enqueue is acknowledged after
its commit reached the disk) and Redis (no persistence: Redis is only an index) on free loopback
ports in a temp dir, runs the node as a separate process (`python -m worcr_node node`, configured
by WORCR_* variables) and the workers as separate processes (`python -m worcr.worker
bench.noop_jobs`), so that each one's CPU and RSS can be measured with psutil.

Phases (the method mirrors ../shared/bench-peers/common.py so that the figures are comparable):
  1. enqueue one-by-one: jobs 0..K-1, one `await client.enqueue()` after the other
     (K = --one-by-one, default 2000)                                => enqueue_per_s
  2. enqueue batched: jobs K..N-1 with one `client.enqueue_many()`   => enqueue_batched_per_s
  3. start the workers; every job appends "id start_time" to a shared O_APPEND log;
     processed jobs/s = (N-1) / (last job start - first job start)   => process_per_s
     (worker boot time excluded; a no-op job ends as it starts). Also measured: the time until
     PostgreSQL holds all N jobs as completed (acks are durable too), the peak node RSS, the peak
     worker RSS, and the CPU ms/job of node, workers, PostgreSQL and Redis over the same window.
  4. latency: --latency-n jobs, one enqueue() each, paced at min(100/s, 25% of the processed
     rate) so that the system stays idle; latency = job start - time just before the enqueue
     call                                                             => latency_p50_ms/p99_ms
  5. stop the workers; enqueue --backlog jobs (batched, no worker); Redis INFO used_memory and
     the PostgreSQL database size                                     => redis_used_mb
--code REV runs the node, the workers and the driver's SDK from a `git archive` copy of REV (as
bench/dispatch_scale.py does), so that two revisions can be compared with the same benchmark and
services; the default, `worktree`, runs the checkout as it is. The code run is recorded (`code`).
Progress goes to stderr; the last line of stdout is one JSON object with every figure.
--profile DIR records the node (and workers) with py-spy during phase 3 and prints the top
functions (it slows them down: use a separate run for the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worcr_node.embedded import PostgresServer, RedisServer, free_port  # noqa: E402

PY = sys.executable
MB = 2**20


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- process measurement -------------------------------------------------------------------------


def tree(pids: list[int]) -> list[psutil.Process]:
    procs: list[psutil.Process] = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs.append(p)
            procs.extend(p.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return procs


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds (user+sys) used so far by the process trees, incl. reaped children."""
    total = 0.0
    for p in tree(pids):
        try:
            c = p.cpu_times()
            total += c.user + c.system + c.children_user + c.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def tree_rss(pids: list[int]) -> int:
    total = 0
    for p in tree(pids):
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class Sampler(threading.Thread):
    """Peak RSS of named process groups, sampled every 0.25 s; `reset()` starts a new window."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.groups: dict[str, list[int]] = {}
        self.peak: dict[str, int] = {}
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()

    def watch(self, name: str, pids: list[int]) -> None:
        with self.lock:
            self.groups[name] = pids
            self.peak[name] = 0

    def reset(self) -> None:
        with self.lock:
            self.peak = dict.fromkeys(self.groups, 0)

    def run(self) -> None:
        while not self.stop_ev.is_set():
            with self.lock:
                groups = dict(self.groups)
            for name, pids in groups.items():
                rss = tree_rss(pids)
                with self.lock:
                    self.peak[name] = max(self.peak.get(name, 0), rss)
            self.stop_ev.wait(0.25)


# -- the job log ---------------------------------------------------------------------------------


class LogReader:
    """Incrementally reads jobs.log; keeps id -> first start time (like the peers harness)."""

    def __init__(self, path: Path) -> None:
        self.path, self.pos, self.start, self.dups = path, 0, {}, 0

    def poll(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as fh:
            fh.seek(self.pos)
            data = fh.read()
        cut = data.rfind(b"\n") + 1
        self.pos += cut
        for line in data[:cut].splitlines():
            a, b = line.split()
            i = int(a)
            if i in self.start:
                self.dups += 1
            else:
                self.start[i] = float(b)

    def count(self, lo: int, hi: int) -> int:
        return sum(1 for i in self.start if lo <= i < hi)


def pct(xs: list[float], q: float) -> float | None:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else None


# -- py-spy profiles -----------------------------------------------------------------------------


def start_profile(out_dir: Path, name: str, pid: int) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not os.path.exists(exe):
        say("py-spy not found: no profile (pip install py-spy)")
        return None
    out = out_dir / f"{name}.collapsed"
    cmd = [exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "-o", str(out)]
    log = open(out_dir / f"{name}.pyspy.log", "wb")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def summarize_profile(path: Path, top: int = 25) -> str:
    """Self and inclusive sample shares of the functions in a py-spy collapsed-stack file."""
    if not path.exists():
        return f"{path}: no profile written"
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    if not total:
        return f"{path}: empty profile"
    lines = [f"{path.name}: {total} samples", "  self%  function"]
    lines += [f"  {100 * c / total:5.1f}  {f}" for f, c in own.most_common(top)]
    lines += ["  incl%  function"]
    lines += [f"  {100 * c / total:5.1f}  {f}" for f, c in incl.most_common(top)]
    return "\n".join(lines)


def start_profiles(out: Path, node_pid: int, wpids: list[int]) -> list[subprocess.Popen[bytes]]:
    out.mkdir(parents=True, exist_ok=True)
    named = [("node", node_pid)] + [(f"worker{j}", p) for j, p in enumerate(wpids)]
    return [p for name, pid in named if (p := start_profile(out, name, pid)) is not None]


def finish_profiles(out: Path, profilers: list[subprocess.Popen[bytes]]) -> None:
    for p in profilers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(30)
    summary = "\n\n".join(summarize_profile(f) for f in sorted(out.glob("*.collapsed")))
    (out / "summary.txt").write_text(summary + "\n")
    print(summary, file=sys.stderr)


# -- the benchmark -------------------------------------------------------------------------------


class Bench:
    job_module = "bench.noop_jobs"  # what the worker processes run

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="worcr-bench-", dir=args.dir))
        self.logdir = self.tmp / "joblog"
        self.logdir.mkdir()
        self.pg = PostgresServer(self.tmp / "pg", fsync=True)
        self.redis = RedisServer(self.tmp / "redis")
        self.node: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.sampler = Sampler()
        self.res: dict[str, Any] = {}
        self.db_url = ""
        self.node_addr = ""

    # services ----------------------------------------------------------------------------------

    def start_services(self) -> None:
        say(f"starting PostgreSQL (fsync on) and Redis under {self.tmp}")
        self.pg.start()
        self.redis.start()

    async def create_db(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.pg.dsn)
        try:
            await conn.execute("CREATE DATABASE worcr")
            self.res["postgres_version"] = await conn.fetchval("SHOW server_version")
            self.res["pg_fsync"] = await conn.fetchval("SHOW fsync")
            self.res["pg_synchronous_commit"] = await conn.fetchval("SHOW synchronous_commit")
        finally:
            await conn.close()
        self.db_url = self.pg.dsn.rsplit("/", 1)[0] + "/worcr"

    def start_node(self) -> None:
        http, listen = free_port(), free_port()
        env = dict(
            os.environ,
            WORCR_DATABASE_URL=self.db_url,
            WORCR_REDIS_URL=self.redis.url,
            WORCR_HTTP=f"127.0.0.1:{http}",
            WORCR_LISTEN=f"127.0.0.1:{listen}",
            WORCR_NODE_ID="bench-node",
        )
        log = open(self.tmp / "node.log", "wb")
        cmd = [PY, "-m", "worcr_node", "--log-level", self.args.log_level, "node"]
        self.node = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            text = (self.tmp / "node.log").read_text(errors="replace")
            if "workers tcp://" in text:
                break
            if self.node.poll() is not None:
                sys.exit(f"the node exited with code {self.node.returncode}:\n{text[-3000:]}")
            time.sleep(0.1)
        else:
            sys.exit(f"the node did not start in 60 s; see {self.tmp / 'node.log'}")
        self.node_addr = f"127.0.0.1:{listen}"
        self.sampler.watch("node", [self.node.pid])
        say(f"node pid {self.node.pid} up, workers connect to {self.node_addr}")

    def start_workers(self) -> None:
        env = dict(os.environ, BENCH_LOG_DIR=str(self.logdir), PYTHONPATH=str(ROOT))
        for k in range(self.args.workers):
            cmd = [
                PY,
                "-m",
                "worcr.worker",
                self.job_module,
                "--nodes",
                self.node_addr,
                "--concurrency",
                str(self.args.concurrency),
                "--log-level",
                self.args.log_level,
            ]
            if self.args.prefetch is not None:
                cmd += ["--prefetch", str(self.args.prefetch)]
            log = open(self.tmp / f"worker{k}.log", "wb")
            self.workers.append(
                subprocess.Popen(
                    cmd,
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        self.sampler.watch("workers", [w.pid for w in self.workers])

    def stop_workers(self, grace: float = 15.0) -> None:
        for w in self.workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        deadline = time.time() + grace
        for w in self.workers:
            try:
                w.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait(5)
        self.workers = []
        self.sampler.watch("workers", [])

    def stop_all(self) -> None:
        self.sampler.stop_ev.set()
        with contextlib.suppress(Exception):
            self.stop_workers()
        if self.node is not None and self.node.poll() is None:
            self.node.send_signal(signal.SIGTERM)
            try:
                self.node.wait(30)
            except subprocess.TimeoutExpired:
                self.node.kill()
                self.node.wait(5)
        for server in (self.redis, self.pg):
            with contextlib.suppress(Exception):
                server.stop()
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            say(f"kept {self.tmp}")

    # phases ------------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        import asyncpg
        import redis

        from worcr import Client

        a = self.args
        n, k = a.jobs, min(a.one_by_one, a.jobs)
        await self.create_db()
        self.start_node()
        self.sampler.start()
        r = redis.Redis.from_url(self.redis.url)
        self.res["redis_version"] = r.info("server")["redis_version"]
        db = await asyncpg.connect(self.db_url)
        client = await Client.connect(self.node_addr)
        try:
            # 1. one-by-one
            say(f"phase 1: enqueue {k:,} jobs one by one (sequential awaits)")
            t0 = time.perf_counter()
            for i in range(k):
                await client.enqueue("noop", i)
            dt = time.perf_counter() - t0
            self.res["enqueue_per_s"] = k / dt if k else None
            say(f"  {self.res['enqueue_per_s']:,.0f} jobs/s")

            # 2. batched
            say(f"phase 2: enqueue {n - k:,} jobs with one enqueue_many()")
            t0 = time.perf_counter()
            await client.enqueue_many([{"kind": "noop", "args": [i]} for i in range(k, n)])
            dt = time.perf_counter() - t0
            self.res["enqueue_batched_per_s"] = (n - k) / dt if n > k else None
            say(f"  {self.res['enqueue_batched_per_s']:,.0f} jobs/s")

            await self.process_phase(db, n)
            if self.res.get("status") == "ok":
                await self.latency_phase(client, n)
            self.stop_workers()
            await self.backlog_phase(client, db, r)
        finally:
            await client.close()
            await db.close()
        return self.res

    async def process_phase(self, db: Any, n: int) -> None:
        a = self.args
        say(
            f"phase 3: start {a.workers} worker process(es), concurrency {a.concurrency}; "
            f"wait for {n:,} jobs"
        )
        self.sampler.reset()
        reader = LogReader(self.logdir / "jobs.log")
        node_pid = self.node.pid if self.node else 0
        pg_pids = [self.pg.pid or 0]
        redis_pids = [self.redis.pid or 0]
        self.start_workers()
        wpids = [w.pid for w in self.workers]
        profilers: list[subprocess.Popen[bytes]] = []
        cpu0: tuple[Any, ...] | None = None
        deadline = time.time() + a.timeout
        last_say = time.time()
        self.res["status"] = "ok"
        while True:
            reader.poll()
            done = reader.count(0, n)
            if cpu0 is None and done:
                cpu0 = (
                    done,
                    tree_cpu([node_pid]),
                    tree_cpu(wpids),
                    tree_cpu(pg_pids),
                    tree_cpu(redis_pids),
                    time.process_time(),
                    time.time(),
                )
                if a.profile:
                    profilers = start_profiles(Path(a.profile), node_pid, wpids)
            if done >= n:
                break
            if problem := self._stalled(done, n, deadline):
                self.res["status"] = problem
                break
            if time.time() - last_say > 2:
                last_say = time.time()
                say(f"  {done:,}/{n:,} jobs started")
            await asyncio.sleep(0.1)
        for p in profilers:
            p.send_signal(signal.SIGINT)
        if cpu0 is not None and done > cpu0[0]:
            self._cpu_figures(cpu0, done, [[node_pid], wpids, pg_pids, redis_pids])
        starts = sorted(reader.start[i] for i in range(n) if i in reader.start)
        self.res["jobs"] = n
        self.res["done"] = len(starts)
        if len(starts) > 1:
            self.res["process_s"] = starts[-1] - starts[0]
            self.res["process_per_s"] = (len(starts) - 1) / self.res["process_s"]
            self.res["tail_s"] = starts[-1] - starts[int(0.99 * (len(starts) - 1))]
            say(
                f"  processed {len(starts):,} jobs: {self.res['process_per_s']:,.0f} jobs/s "
                f"(first to last start, {self.res['process_s']:.2f} s)"
            )
        if self.res["status"] == "ok":
            await self._wait_completed(db, n, starts[0])
        self.res["node_rss_mb"] = self.sampler.peak.get("node", 0) / MB
        self.res["worker_rss_mb"] = self.sampler.peak.get("workers", 0) / MB
        say(
            f"  node RSS peak {self.res['node_rss_mb']:.0f} MB, workers "
            f"{self.res['worker_rss_mb']:.0f} MB; CPU ms/job {self.res.get('cpu_ms_per_job')}"
        )
        if profilers:
            finish_profiles(Path(a.profile), profilers)
        self.res["duplicates"] = reader.dups
        self._reader = reader

    def _stalled(self, done: int, n: int, deadline: float) -> str | None:
        if any(w.poll() is not None for w in self.workers):
            return "worker exited"
        if self.node and self.node.poll() is not None:
            return "node exited"
        if time.time() > deadline:
            return f"TIMEOUT {done}/{n}"
        return None

    def _cpu_figures(self, cpu0: tuple[Any, ...], done: int, groups: list[list[int]]) -> None:
        """CPU ms/job and cores busy of node, workers, PostgreSQL, Redis since `cpu0`."""
        jobs = done - cpu0[0]
        names = ("node", "workers", "postgres", "redis")
        cpu = {
            k: tree_cpu(pids) - cpu0[1 + j]
            for j, (k, pids) in enumerate(zip(names, groups, strict=True))
        }
        cpu["total"] = sum(cpu.values())
        self.res["cpu_ms_per_job"] = {key: round(1000 * v / jobs, 3) for key, v in cpu.items()}
        wall = time.time() - cpu0[6]
        self.res["cpu_cores_busy"] = {key: round(v / wall, 2) for key, v in cpu.items()}
        self.res["driver_cpu_pct"] = round(100 * (time.process_time() - cpu0[5]) / wall, 1)

    async def _wait_completed(self, db: Any, n: int, first_start: float) -> None:
        """Acks are durable too: time until PostgreSQL holds every job as completed."""
        completed, t_end = 0, time.time() + 60
        while time.time() < t_end:
            completed = await db.fetchval(
                "SELECT count(*) FROM worcr_jobs WHERE state = 'completed'"
            )
            if completed >= n:
                break
            await asyncio.sleep(0.05)
        self.res["completed_in_pg"] = completed
        self.res["all_completed_after_s"] = time.time() - first_start

    async def latency_phase(self, client: Any, n: int) -> None:
        a = self.args
        rate = min(100.0, 0.25 * self.res["process_per_s"])
        say(f"phase 4: latency, {a.latency_n} single enqueues at {rate:.0f}/s on an idle system")
        reader = self._reader
        enq: dict[int, float] = {}
        t_start = time.perf_counter()
        for j in range(a.latency_n):
            delay = t_start + j / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            i = n + j
            enq[i] = time.time()
            await client.enqueue("noop", i)
        deadline = time.time() + 60
        while time.time() < deadline:
            reader.poll()
            if reader.count(n, n + a.latency_n) >= a.latency_n:
                break
            await asyncio.sleep(0.1)
        lats = [reader.start[i] - t for i, t in enq.items() if i in reader.start]
        self.res["latency_n"] = len(lats)
        self.res["latency_rate"] = rate
        self.res["latency_p50_ms"] = 1000 * p if (p := pct(lats, 0.5)) is not None else None
        self.res["latency_p99_ms"] = 1000 * p if (p := pct(lats, 0.99)) is not None else None
        self.res["latency_max_ms"] = 1000 * max(lats) if lats else None
        say(f"  p50 {self.res['latency_p50_ms']:.1f} ms, p99 {self.res['latency_p99_ms']:.1f} ms")
        self.res["duplicates"] = reader.dups

    async def backlog_phase(self, client: Any, db: Any, r: Any) -> None:
        a = self.args
        self.res["backlog"] = a.backlog
        before = r.info("memory")["used_memory"]
        self.res["redis_used_mb_before_backlog"] = before / MB
        if not a.backlog:
            return
        say(f"phase 5: enqueue a backlog of {a.backlog:,} jobs (no worker running)")
        self.sampler.reset()
        base = 10_000_000  # ids of backlog jobs (never run)
        chunk = 20_000
        t0 = time.perf_counter()
        last = t0
        for lo in range(0, a.backlog, chunk):
            hi = min(a.backlog, lo + chunk)
            await client.enqueue_many([{"kind": "noop", "args": [base + i]} for i in range(lo, hi)])
            if time.perf_counter() - last > 3 or hi == a.backlog:
                last = time.perf_counter()
                say(
                    f"  {hi:,}/{a.backlog:,} queued ({hi / (last - t0):,.0f} jobs/s), "
                    f"Redis used_memory {r.info('memory')['used_memory'] / MB:.1f} MB"
                )
        self.res["backlog_enqueue_per_s"] = a.backlog / (time.perf_counter() - t0)
        # Let the node settle (window refills), then take the largest of a few readings.
        await asyncio.sleep(2.0)
        used = 0
        for _ in range(8):
            used = max(used, r.info("memory")["used_memory"])
            await asyncio.sleep(0.25)
        info = r.info("memory")
        self.res["redis_used_mb"] = used / MB
        self.res["redis_used_peak_mb"] = info["used_memory_peak"] / MB
        self.res["redis_keys"] = r.dbsize()
        self.res["queued_in_pg"] = await db.fetchval(
            "SELECT count(*) FROM worcr_jobs WHERE state = 'queued'"
        )
        self.res["pg_db_mb"] = await db.fetchval("SELECT pg_database_size('worcr')") / MB
        self.res["node_rss_backlog_mb"] = self.sampler.peak.get("node", 0) / MB
        if self.node:
            self.res["node_rss_after_backlog_mb"] = tree_rss([self.node.pid]) / MB
        say(
            f"  Redis used_memory {self.res['redis_used_mb']:.1f} MB "
            f"(peak {self.res['redis_used_peak_mb']:.1f} MB, {self.res['redis_keys']} keys), "
            f"{self.res['queued_in_pg']:,} queued in PostgreSQL ({self.res['pg_db_mb']:.0f} MB), "
            f"node RSS peak {self.res['node_rss_backlog_mb']:.0f} MB"
        )


def machine() -> dict[str, Any]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in open("/proc/cpuinfo")
            if ln.startswith("model name")
        ),
        "?",
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "mem_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }


def git(*argv: str) -> str:
    return subprocess.run(
        ["git", *argv], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


def snapshot_code(rev: str, parent: str | None) -> tuple[dict[str, Any], Path | None]:
    """--code: run the node, the workers and the driver's SDK from `git archive <rev>` in a temp
    dir (like bench/dispatch_scale.py's `snapshot_code`); 'worktree': the checkout as it is."""
    global ROOT
    if rev == "worktree":
        dirty = git("status", "--porcelain", "--", "worcr", "worcr_node", "bench/noop_jobs.py")
        return {"code": "worktree", "head": git("rev-parse", "HEAD"), "dirty": dirty}, None
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    snap = Path(tempfile.mkdtemp(prefix="worcr-code-", dir=parent))
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(snap)], input=archive.stdout, check=True)
    ROOT = snap  # Bench.start_node/start_workers: cwd and PYTHONPATH
    sys.path.insert(0, str(snap))  # the driver's SDK (worcr.Client, imported in Bench.run)
    say(f"node, workers and driver SDK run commit {commit[:10]} from {snap}")
    return {"code": commit}, snap


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--jobs", type=int, default=20_000, help="jobs processed (default 20000)")
    ap.add_argument(
        "--backlog",
        type=int,
        default=1_000_000,
        help="jobs queued for the Redis memory figure (default 1000000; 0 skips)",
    )
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--concurrency", type=int, default=10, help="per worker (default 10)")
    ap.add_argument("--prefetch", type=int, default=None, help="per worker (default: concurrency)")
    ap.add_argument(
        "--one-by-one",
        type=int,
        default=2000,
        help="how many of the --jobs are enqueued one by one (default 2000)",
    )
    ap.add_argument("--latency-n", type=int, default=300, help="latency probes (default 300)")
    ap.add_argument("--timeout", type=float, default=600, help="bound for the processing phase")
    ap.add_argument(
        "--profile",
        default=None,
        metavar="DIR",
        help="py-spy the node and workers during processing; write DIR/*.collapsed",
    )
    ap.add_argument("--log-level", default="WARNING", help="node and worker log level")
    ap.add_argument("--dir", default=None, help="parent of the temp dir (default: system temp)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    ap.add_argument(
        "--code",
        default="worktree",
        metavar="REV",
        help="git revision the node, workers and driver SDK run, from a `git archive` copy; "
        "default 'worktree': the checkout as it is",
    )
    args = ap.parse_args()
    if args.jobs < 2:
        ap.error("--jobs must be at least 2")
    if "worcr" in sys.modules:
        ap.error("internal: worcr was imported before --code was applied")
    code, snap = snapshot_code(args.code, args.dir)

    bench = Bench(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    res: dict[str, Any] = {}
    try:
        bench.start_services()
        try:
            import uvloop

            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        except ImportError:
            runner = asyncio.Runner()
        with runner:
            res = runner.run(bench.run())
    except KeyboardInterrupt:
        say("interrupted")
    finally:
        bench.stop_all()
        if snap is not None and not args.keep:
            shutil.rmtree(snap, ignore_errors=True)
    res.update(
        **code,
        workers=args.workers,
        concurrency=args.concurrency,
        machine=machine(),
        command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    )
    for key, value in list(res.items()):
        if isinstance(value, float):
            res[key] = round(value, 3)
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
