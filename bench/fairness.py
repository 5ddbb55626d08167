"""Worcr multi-tenant fairness benchmark: one big tenant's backlog, then ten small tenants.

    .venv/bin/python bench/fairness.py          # --big 100000 --small-tenants 10 --small 100
    .venv/bin/python bench/fairness.py --big 5000 --small 20 --strategies fifo,round_robin

Scenario (from the product announcement): the workers are running; tenant A enqueues --big
no-op jobs, then the --small-tenants tenants t1..tN enqueue --small jobs each; --slots worker
slots in total (--workers processes x slots/workers concurrency, the SDK's default prefetch =
concurrency, so each worker holds up to 2 x concurrency jobs).

Method, for each strategy of --strategies (default fifo, round_robin, weighted_fair,
fewest_running), one after the other:
  1. a fresh PostgreSQL database and an empty Redis (FLUSHALL) on the same servers (started once,
     like bench/throughput.py: fsync on, free loopback ports, temp dir); the strategy is written
     with `PolicyStore.fairness_set(strategy, {})` BEFORE the node starts, so the node runs it
     from its first pick (its PolicyWatcher loads the policy before the dispatcher starts);
  2. start the node (`python -m worcr_node node`) and the workers (`python -m worcr.worker
     bench.fairness_jobs`), and wait until every worker is connected;
  3. tenant A enqueues its jobs with sequential `Client.enqueue_many` calls of --chunk jobs
     (default 1,000); the enqueue time of a job is the time just before its call; then the small
     tenants' jobs are enqueued at once (one `enqueue_many` per tenant, issued together);
  4. every job appends "tenant_no index end_time" to an O_APPEND log; wait until every job has
     completed (first completion of each job counts; duplicates are counted).
Latency = completion - enqueue. Figures per strategy:
  - per tenant: mean and p90 latency of its first --head (100) jobs in enqueue order, also over
    all its jobs, and when its last job completed;
  - head_mean_stddev_ms / head_p90_stddev_ms: population standard deviation, across all
    tenants (A and the small ones), of those per-tenant head means / p90s;
  - throughput_per_s = all jobs / (last completion - first completion), and throughput_vs_fifo;
    window_throughput_per_s = completions (any tenant) in the --window (2) s after the small
    tenants' arrival / --window: the strategies differ only while several tenants have ready
    work, after that every strategy serves A's one lane the same way;
  - big_done_when_small_finished: A's jobs completed when the last small tenant's last job
    completed; big_done_before_small_arrived and big_done_after_small_arrived split it at the
    moment the small tenants' enqueue began (the workers run while A enqueues, so part of A is
    done before the small tenants exist).
Before commit 57e1e5f (plan_cache_mode=force_custom_plan), the node's pooled connections cached
the generic plan of the claim statement built while worcr_jobs was nearly empty (a hash join
over every queued row), so each claim cost ~50-100 ms until an ANALYZE of the table invalidated
the plan; with PostgreSQL's default autovacuum_naptime (60 s) that happened up to a minute after
the big enqueue, at a moment that differed from run to run and dominated the throughput
comparison between strategies.
--autovacuum-naptime S sets autovacuum_naptime (ALTER SYSTEM) so autovacuum analyzes the table
as it grows (default: PostgreSQL's 60 s, as deployed). Other processes of the machine that look
like benchmarks or tests are recorded per strategy (`other_activity`), with the load average.
--workers-last starts the workers after every enqueue.
Progress goes to stderr; the last line of stdout is one JSON object keyed by strategy (also
written to --json); --plot writes completions over time per tenant, one row per strategy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fairness_jobs import LOG_NAME  # noqa: E402
from bench.throughput import MB, Bench, machine, pct, say  # noqa: E402

STRATEGIES = ("fifo", "round_robin", "weighted_fair", "fewest_running")
BIG = "A"
KIND = "fair"


def tenant_name(no: int) -> str:
    return BIG if no == 0 else f"t{no}"


# -- the completion log --------------------------------------------------------------------------


class CompletionLog:
    """Incrementally reads fairness.log; keeps (tenant_no, index) -> first completion time."""

    def __init__(self, path: Path, sizes: list[int]) -> None:
        self.path, self.pos, self.dups, self.count = path, 0, 0, 0
        self.done: list[list[float | None]] = [[None] * n for n in sizes]

    def poll(self) -> int:
        if self.path.exists():
            with open(self.path, "rb") as fh:
                fh.seek(self.pos)
                data = fh.read()
            cut = data.rfind(b"\n") + 1
            self.pos += cut
            for line in data[:cut].splitlines():
                a, b, c = line.split()
                row = self.done[int(a)]
                i = int(b)
                if row[i] is None:
                    row[i] = float(c)
                    self.count += 1
                else:
                    self.dups += 1
        return self.count


# -- one strategy's measurements -----------------------------------------------------------------


@dataclass
class Run:
    strategy: str
    sizes: list[int]
    t0: float = 0.0  # just before A's first enqueue call
    chunk: int = 1000
    window: float = 2.0  # s after the small tenants' arrival, for window_throughput
    big_enq: list[float] = field(default_factory=list)  # per chunk: time before its call
    small_enq: float = 0.0  # time before the small tenants' calls
    big_enq_done: float = 0.0
    small_enq_done: float = 0.0
    log: CompletionLog | None = None
    status: str = "ok"
    extra: dict[str, Any] = field(default_factory=dict)

    def enqueued_at(self, tenant_no: int, i: int) -> float:
        return self.big_enq[i // self.chunk] if tenant_no == 0 else self.small_enq

    def completions(self, tenant_no: int) -> list[float]:
        assert self.log is not None
        return sorted(t for t in self.log.done[tenant_no] if t is not None)


def ms(x: float | None) -> float | None:
    return None if x is None else round(1000 * x, 1)


def summary(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"min": None, "median": None, "max": None}
    return {
        "min": round(min(xs), 1),
        "median": round(statistics.median(xs), 1),
        "max": round(max(xs), 1),
    }


def tenant_figures(run: Run, no: int, head: int) -> dict[str, Any]:
    assert run.log is not None
    done = run.log.done[no]
    lats = [t - run.enqueued_at(no, i) for i, t in enumerate(done) if t is not None]
    head_lats = [t - run.enqueued_at(no, i) for i, t in enumerate(done[:head]) if t is not None]
    finished = [t for t in done if t is not None]
    return {
        "jobs": len(done),
        "completed": len(finished),
        "head_n": len(head_lats),
        "head_mean_ms": ms(statistics.fmean(head_lats)) if head_lats else None,
        "head_p90_ms": ms(pct(head_lats, 0.9)),
        "all_mean_ms": ms(statistics.fmean(lats)) if lats else None,
        "all_p90_ms": ms(pct(lats, 0.9)),
        "max_ms": ms(max(lats)) if lats else None,
        "last_done_s": round(max(finished) - run.t0, 3) if finished else None,
    }


def figures(run: Run, head: int) -> dict[str, Any]:
    """Everything reported for one strategy (latencies in ms, instants in s since t0)."""
    assert run.log is not None
    tenants = {tenant_name(no): tenant_figures(run, no, head) for no in range(len(run.sizes))}
    small_names = [n for n in tenants if n != BIG]
    big = run.completions(0)
    small = [t for no in range(1, len(run.sizes)) for t in run.completions(no)]
    every = sorted(big + small)
    res: dict[str, Any] = {"status": run.status, "jobs": sum(run.sizes), "completed": len(every)}
    means = [v["head_mean_ms"] for v in tenants.values() if v["head_mean_ms"] is not None]
    p90s = [v["head_p90_ms"] for v in tenants.values() if v["head_p90_ms"] is not None]
    res["head_mean_stddev_ms"] = round(statistics.pstdev(means), 1) if len(means) > 1 else None
    res["head_p90_stddev_ms"] = round(statistics.pstdev(p90s), 1) if len(p90s) > 1 else None
    span = every[-1] - every[0] if len(every) > 1 else 0.0
    res["throughput_per_s"] = round(len(every) / span, 1) if span > 0 else None
    res["run_s"] = round(every[-1] - run.t0, 3) if every else None
    # The strategies differ only while several tenants have ready work; once the small tenants
    # are done, every strategy serves A's single lane alike. So also: all completions in the
    # same --window seconds after the small tenants' arrival.
    lo, hi = run.small_enq, run.small_enq + run.window
    in_window = sum(1 for t in every if lo <= t < hi)
    full = bool(every) and every[-1] >= hi
    res["window_throughput_per_s"] = round(in_window / run.window, 1) if full else None
    if small and len(small) == sum(run.sizes[1:]):
        small_last = max(small)
        res["big_done_when_small_finished"] = sum(1 for t in big if t <= small_last)
        res["big_done_before_small_arrived"] = sum(1 for t in big if t < run.small_enq)
        res["big_done_after_small_arrived"] = (
            res["big_done_when_small_finished"] - res["big_done_before_small_arrived"]
        )
        res["small_finished_after_arrival_s"] = round(small_last - run.small_enq, 3)
    else:
        res["big_done_when_small_finished"] = None
    res["small_arrived_s"] = round(run.small_enq - run.t0, 3)
    res["big_enqueue_s"] = round(run.big_enq_done - run.t0, 3)
    res["big_enqueue_per_s"] = round(run.sizes[0] / max(1e-9, run.big_enq_done - run.t0), 1)
    res["small_enqueue_s"] = round(run.small_enq_done - run.small_enq, 3)
    res["small_tenants_head_mean_ms"] = summary([tenants[n]["head_mean_ms"] for n in small_names])
    res["small_tenants_head_p90_ms"] = summary([tenants[n]["head_p90_ms"] for n in small_names])
    res["duplicates"] = run.log.dups
    res["tenants"] = tenants
    res.update(run.extra)
    return res


# -- the benchmark -------------------------------------------------------------------------------


def policy_store(store: Any, index: Any) -> Any:
    """A PolicyStore of the code under test (--code may name one from before the bus)."""
    from worcr_node.dispatch.policy import PolicyStore

    try:
        from worcr_node.bus import Bus
    except ImportError:  # before worcr_node/bus.py: it took the index
        return PolicyStore(store, index)
    return PolicyStore(store, Bus(index))


class FairnessBench(Bench):
    """Reuses bench/throughput.py's services, node start and worker stop; one node per strategy."""

    job_module = "bench.fairness_jobs"

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.root = self.tmp
        self.sizes = [args.big] + [args.small] * args.small_tenants
        self.runs: dict[str, Run] = {}
        self.started = time.time()

    # processes ---------------------------------------------------------------------------------

    def stop_node(self) -> None:
        if self.node is not None and self.node.poll() is None:
            self.node.send_signal(signal.SIGTERM)
            try:
                self.node.wait(30)
            except subprocess.TimeoutExpired:
                self.node.kill()
                self.node.wait(5)
        self.node = None

    def stop_all(self) -> None:
        self.tmp = self.root
        super().stop_all()

    def node_ports(self) -> list[int]:
        if self.node is None:
            return []
        with contextlib.suppress(psutil.Error):
            conns = psutil.Process(self.node.pid).net_connections(kind="tcp")
            return sorted({c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN})
        return []

    def node_fairness(self) -> Any:
        """The node's `GET /api/v1/dispatch/fairness`, if the route exists (else None)."""
        listen = int(self.node_addr.rsplit(":", 1)[1])
        for port in self.node_ports():
            if port == listen:
                continue
            url = f"http://127.0.0.1:{port}/api/v1/dispatch/fairness"
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(url, timeout=5) as resp:
                    return json.loads(resp.read())
        return None

    # per strategy ------------------------------------------------------------------------------

    async def fresh_state(self, strategy: str) -> None:
        """A new database with `strategy` as the default fairness, and an empty Redis."""
        import asyncpg
        import redis

        from worcr_node.dispatch.fairness import Strategy
        from worcr_node.store.pg import PgStore
        from worcr_node.store.redis_index import RedisIndex

        r = redis.Redis.from_url(self.redis.url)
        try:
            r.flushall()
        finally:
            r.close()
        db = f"worcr_{strategy}"
        conn = await asyncpg.connect(self.pg.dsn)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {db}")
            await conn.execute(f"CREATE DATABASE {db}")
            await conn.execute("CHECKPOINT")
        finally:
            await conn.close()
        self.db_url = self.pg.dsn.rsplit("/", 1)[0] + "/" + db
        store, index = PgStore(self.db_url), RedisIndex(self.redis.url, "worcr")
        await store.open()  # runs the migrations
        try:
            policy = policy_store(store, index)
            await policy.fairness_set(Strategy(strategy), {})
            stored = (await policy.load()).fairness.to_json()
        finally:
            await store.close()
            await index.close()
        if stored.get("default") != strategy:
            sys.exit(f"fairness not stored: wanted {strategy}, the database says {stored}")

    async def drop_db(self) -> None:
        import asyncpg

        db = self.db_url.rsplit("/", 1)[1]
        conn = await asyncpg.connect(self.pg.dsn)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {db}")
        finally:
            await conn.close()

    async def wait_workers(self) -> None:
        """Until every worker process holds an established connection to the node."""
        listen = int(self.node_addr.rsplit(":", 1)[1])
        deadline = time.time() + 60
        while time.time() < deadline:
            connected = 0
            for w in self.workers:
                if w.poll() is not None:
                    sys.exit(f"a worker exited at start; see the logs under {self.tmp}")
                with contextlib.suppress(psutil.Error):
                    conns = psutil.Process(w.pid).net_connections(kind="tcp")
                    connected += any(
                        c.raddr and c.raddr.port == listen and c.status == psutil.CONN_ESTABLISHED
                        for c in conns
                    )
            if connected == len(self.workers):
                return
            await asyncio.sleep(0.1)
        sys.exit(f"the workers did not connect in 60 s; see the logs under {self.tmp}")

    async def run_strategy(self, strategy: str) -> Run:
        a = self.args
        self.tmp = self.root / strategy
        self.logdir = self.tmp / "joblog"
        self.logdir.mkdir(parents=True)
        run = Run(strategy, self.sizes, chunk=a.chunk, window=a.window)
        self.runs[strategy] = run
        run.log = CompletionLog(self.logdir / LOG_NAME, self.sizes)
        await self.fresh_state(strategy)
        run.extra["code_at_node_start"] = git_state()  # another checkout user may edit it
        self.start_node()
        self.sampler.reset()
        run.extra["node_fairness_api"] = self.node_fairness()
        if not a.workers_last:
            await self.start_and_wait_workers()
        await self.enqueue_all(run)
        if a.workers_last:
            await self.start_and_wait_workers()
        await self.wait_done(run)
        run.extra["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
        run.extra["node_rss_mb"] = round(self.sampler.peak.get("node", 0) / MB, 1)
        self.stop_workers()
        self.stop_node()
        await self.drop_db()
        return run

    async def set_naptime(self) -> None:
        """--autovacuum-naptime: ALTER SYSTEM SET autovacuum_naptime, then reload."""
        import asyncpg

        conn = await asyncpg.connect(self.pg.dsn)
        try:
            naptime = f"{self.args.autovacuum_naptime:g}s"
            await conn.execute(f"ALTER SYSTEM SET autovacuum_naptime = '{naptime}'")
            await conn.execute("SELECT pg_reload_conf()")
            await asyncio.sleep(0.5)
            say(f"autovacuum_naptime = {await conn.fetchval('SHOW autovacuum_naptime')}")
        finally:
            await conn.close()

    async def start_and_wait_workers(self) -> None:
        self.start_workers()
        await self.wait_workers()
        await asyncio.sleep(1.0)  # their hello answered, credit in place

    async def enqueue_all(self, run: Run) -> None:
        """A's jobs in sequential enqueue_many calls, then every small tenant's at once."""
        from worcr import Client

        a = self.args
        assert run.log is not None
        client = await Client.connect(self.node_addr)
        try:
            say(f"  enqueue {a.big:,} jobs of tenant {BIG} ({a.chunk:,} per enqueue_many call)")
            run.t0 = time.time()
            for lo in range(0, a.big, a.chunk):
                hi = min(a.big, lo + a.chunk)
                specs = [{"kind": KIND, "args": [0, i], "tenant": BIG} for i in range(lo, hi)]
                run.big_enq.append(time.time())
                await client.enqueue_many(specs)
            run.big_enq_done = time.time()
            done_then = run.log.poll()
            say(
                f"  {BIG} enqueued in {run.big_enq_done - run.t0:.2f} s "
                f"({done_then:,} of its jobs completed meanwhile); now {a.small_tenants} "
                f"tenants x {a.small}"
            )
            batches = [
                [{"kind": KIND, "args": [no, i], "tenant": tenant_name(no)} for i in range(a.small)]
                for no in range(1, a.small_tenants + 1)
            ]
            run.small_enq = time.time()
            await asyncio.gather(*(client.enqueue_many(b) for b in batches))
            run.small_enq_done = time.time()
        finally:
            await client.close()

    async def wait_done(self, run: Run) -> None:
        assert run.log is not None
        total = sum(self.sizes)
        deadline = time.time() + self.args.timeout
        last_say = time.time()
        small_done_at: float | None = None
        others: set[str] = set()
        last_look = 0.0
        while True:
            if time.time() - last_look > 2:
                last_look = time.time()
                others |= other_activity()
                run.extra["other_activity"] = sorted(others)
            done = run.log.poll()
            if done >= total:
                break
            if problem := self._stalled(done, total, deadline):
                run.status = problem
                say(f"  STOPPED: {problem}")
                break
            small = sum(len(r) - r.count(None) for r in run.log.done[1:])
            if small_done_at is None and small >= sum(self.sizes[1:]):
                small_done_at = time.time()
                say(f"  small tenants all done after {small_done_at - run.small_enq:.2f} s")
            if time.time() - last_say > 5:
                last_say = time.time()
                say(f"  {done:,}/{total:,} completed (small tenants {small:,})")
            await asyncio.sleep(0.2)

    async def run(self) -> dict[str, Any]:
        self.sampler.start()
        if self.args.autovacuum_naptime:
            await self.set_naptime()
        for strategy in self.args.strategies:
            say(f"strategy {strategy}")
            run = await self.run_strategy(strategy)
            f = figures(run, self.args.head)
            say(
                f"  {strategy}: {f['throughput_per_s']} jobs/s, A done when small finished: "
                f"{f['big_done_when_small_finished']} "
                f"(after their arrival: {f.get('big_done_after_small_arrived')}), "
                f"head p90 stddev {f['head_p90_stddev_ms']} ms"
            )
        return {}


def other_activity() -> set[str]:
    """Command lines of benchmarks and tests that are not this process's children."""
    mine = {os.getpid()}
    with contextlib.suppress(psutil.Error):
        mine |= {p.pid for p in psutil.Process().children(recursive=True)}
    seen = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["pid"] not in mine and ("pytest" in cmd or "bench/" in cmd):
            if "timeout " not in cmd:
                seen.add(cmd[:160])
    return seen


# -- report ------------------------------------------------------------------------------------


def git_state() -> dict[str, Any]:
    def git(*cmd: str) -> str:
        out = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, check=False)
        return out.stdout.rstrip()

    dirty = git("status", "--porcelain", "--", "worcr_node", "worcr").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted_code": dirty}


def report(bench: FairnessBench, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {s: figures(r, args.head) for s, r in bench.runs.items()}
    base = out.get("fifo", {}).get("throughput_per_s")
    wbase = out.get("fifo", {}).get("window_throughput_per_s")
    setup = {
        "big": args.big,
        "small_tenants": args.small_tenants,
        "small": args.small,
        "slots": args.slots,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "prefetch": args.concurrency,
        "capacity_per_worker": 2 * args.concurrency,
        "chunk": args.chunk,
        "head": args.head,
        "window_s": args.window,
        "autovacuum_naptime_s": args.autovacuum_naptime or 60,
        "workers_started": "after the enqueues" if args.workers_last else "before the enqueues",
        "machine": machine(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(bench.started)),
    }
    for res in out.values():
        tp = res.get("throughput_per_s")
        ratio = round(tp / base, 3) if tp and base else None
        res["throughput_vs_fifo"] = ratio
        wtp = res.get("window_throughput_per_s")
        wratio = round(wtp / wbase, 3) if wtp and wbase else None
        res["window_throughput_vs_fifo"] = wratio
        limit = args.target_big
        res["target"] = {
            "small_finished_before_big_ran": limit,
            "met_counting_all_big_jobs": _lt(res.get("big_done_when_small_finished"), limit),
            "met_counting_big_jobs_after_small_arrived": _lt(
                res.get("big_done_after_small_arrived"), limit
            ),
            "throughput_within_10pct_of_fifo": None if ratio is None else ratio >= 0.9,
            "window_throughput_within_10pct_of_fifo": None if wratio is None else wratio >= 0.9,
        }
        res["setup"] = setup
    return out


def _lt(x: int | None, limit: int) -> bool | None:
    return None if x is None else x < limit


def print_table(out: dict[str, Any]) -> None:
    say(
        "strategy        A-done@small-end (after arrival)  small head mean / p90 (median)  "
        "stddev mean/p90  jobs/s  vs fifo  window jobs/s  vs fifo"
    )
    for s, r in out.items():
        m, p = r["small_tenants_head_mean_ms"], r["small_tenants_head_p90_ms"]
        after = r.get("big_done_after_small_arrived")
        say(
            f"{s:15} {r['big_done_when_small_finished']!s:>8} ({after!s:>6})"
            f"          {m['median']!s:>9} / {p['median']!s:>9} ms      "
            f"{r['head_mean_stddev_ms']!s:>7}/{r['head_p90_stddev_ms']!s:>7}  "
            f"{r['throughput_per_s']!s:>7}  {r['throughput_vs_fifo']!s:>7}  "
            f"{r['window_throughput_per_s']!s:>13}  {r['window_throughput_vs_fifo']}"
        )


# -- plot ------------------------------------------------------------------------------------


def _steps(times: list[float], t0: float, limit: int = 4000) -> tuple[list[float], list[int]]:
    """Cumulative completions (x = s since t0), thinned to at most `limit` points."""
    step = max(1, len(times) // limit)
    idx = list(range(0, len(times), step))
    if times and idx[-1] != len(times) - 1:
        idx.append(len(times) - 1)
    return [times[i] - t0 for i in idx], [i + 1 for i in idx]


def plot(bench: FairnessBench, out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in bench.runs.values() if r.log is not None and r.t0]
    if not runs:
        return
    fig, axes = plt.subplots(len(runs), 2, figsize=(14, 3.4 * len(runs)), squeeze=False)
    colors = plt.get_cmap("tab10")
    for row, run in enumerate(runs):
        res = out[run.strategy]
        big = run.completions(0)
        smalls = [run.completions(no) for no in range(1, len(run.sizes))]
        small_end = max((s[-1] for s in smalls if s), default=run.small_enq)
        for col in range(2):
            ax = axes[row][col]
            zoom = col == 1
            origin = run.small_enq if zoom else run.t0
            for k, times in enumerate(smalls):
                xs, ys = _steps(times, origin)
                x0 = run.small_enq - origin  # from 0 done at their arrival
                ax.plot(
                    [x0, *xs],
                    [0, *ys],
                    color=colors(k % 10),
                    lw=1.2,
                    ds="steps-post",
                    label=tenant_name(k + 1),
                )
            ax.set_ylabel("t1..tN: jobs done")
            ax.set_ylim(0, max(run.sizes[1:], default=1) * 1.05)
            ax2 = ax.twinx()
            if zoom:
                since = [t for t in big if t >= run.small_enq]
                xs, ys = _steps(since, origin)
                ax2.set_ylabel(f"{BIG}: jobs done since t1..tN arrived")
                pad = max(0.3, 0.1 * (small_end - run.small_enq))
                ax.set_xlim(-pad / 3, small_end - run.small_enq + pad)
                ax.set_xlabel("s since the small tenants' enqueue")
                if res.get("big_done_after_small_arrived") is not None:
                    n = res["big_done_after_small_arrived"]
                    ax2.axhline(n, color="k", ls=":", lw=0.8)
                    ax2.set_ylim(0, min(max(1, n) * 2.2, run.sizes[0] * 1.05))
                after = res.get("big_done_after_small_arrived")
                ax.set_title(
                    f"{run.strategy}: from the small tenants' arrival "
                    f"({after} {BIG} jobs done until they finished)",
                    fontsize=10,
                )
            else:
                xs, ys = _steps(big, origin)
                ax2.set_ylabel(f"{BIG}: jobs done")
                ax2.set_ylim(0, run.sizes[0] * 1.05)
                ax.axvline(run.small_enq - origin, color="grey", ls="--", lw=0.8)
                ax.set_xlabel(f"s since {BIG}'s first enqueue (dashed: small tenants enqueue)")
                ax.set_title(
                    f"{run.strategy}: whole run, {res.get('throughput_per_s')} jobs/s",
                    fontsize=10,
                )
            ax2.plot(xs, ys, color="k", lw=2.0, ls="--", label=f"{BIG} (right axis)")
            if row == 0 and col == 0:
                h1, l1 = ax.get_legend_handles_labels()
                h2, l2 = ax2.get_legend_handles_labels()
                ax.legend(h1 + h2, l1 + l2, fontsize=7, ncol=2, loc="upper left")
    fig.suptitle(
        f"Completions per tenant: {BIG} enqueues {run.sizes[0]:,} then {len(run.sizes) - 1} "
        f"tenants x {run.sizes[1] if len(run.sizes) > 1 else 0}; {bench.args.slots} slots",
        fontsize=12,
    )
    fig.tight_layout(w_pad=3.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    say(f"plot written to {path}")


# -- main ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    doc = __doc__ or ""
    ap = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--big", type=int, default=100_000, help="tenant A's jobs (default 100000)")
    ap.add_argument("--small-tenants", type=int, default=10, help="small tenants (default 10)")
    ap.add_argument("--small", type=int, default=100, help="jobs per small tenant (default 100)")
    ap.add_argument("--slots", type=int, default=8, help="worker slots in total (default 8)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated")
    ap.add_argument("--chunk", type=int, default=1000, help="A's jobs per enqueue_many call")
    ap.add_argument("--head", type=int, default=100, help="first N jobs per tenant (default 100)")
    ap.add_argument(
        "--window",
        type=float,
        default=2.0,
        help="s after the small tenants' arrival for window_throughput_per_s (default 2)",
    )
    ap.add_argument(
        "--target-big", type=int, default=2000, help="target: small done before A ran this many"
    )
    ap.add_argument(
        "--workers-last",
        action="store_true",
        help="start the workers after everything is enqueued (not the realistic default)",
    )
    ap.add_argument(
        "--autovacuum-naptime",
        type=float,
        default=0,
        metavar="S",
        help="set PostgreSQL's autovacuum_naptime to S seconds (default: leave it at 60 s)",
    )
    ap.add_argument("--timeout", type=float, default=900, help="bound per strategy, s")
    ap.add_argument("--json", default=str(ROOT / "bench/results/fairness.json"), metavar="PATH")
    ap.add_argument("--plot", default=str(ROOT / "bench/results/fairness.png"), metavar="PATH")
    ap.add_argument("--log-level", default="WARNING", help="node and worker log level")
    ap.add_argument("--dir", default=None, help="parent of the temp dir (default: system temp)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    args = ap.parse_args()
    args.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if bad := [s for s in args.strategies if s not in STRATEGIES]:
        ap.error(f"unknown strategies {bad}; expected some of {list(STRATEGIES)}")
    if len(set(args.strategies)) != len(args.strategies):
        ap.error("--strategies: each strategy at most once")
    if args.slots % args.workers:
        ap.error("--slots must be a multiple of --workers")
    if args.big < 1 or args.small < 1 or args.small_tenants < 1 or args.chunk < 1:
        ap.error("--big, --small, --small-tenants and --chunk must be at least 1")
    args.concurrency = args.slots // args.workers
    args.prefetch = None  # the SDK default: = concurrency
    return args


def main() -> None:
    args = parse_args()
    bench = FairnessBench(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    say(
        f"{args.big:,} jobs of {BIG}, then {args.small_tenants} x {args.small}; "
        f"{args.workers} workers x concurrency {args.concurrency} (prefetch {args.concurrency}); "
        f"strategies {', '.join(args.strategies)}"
    )
    try:
        bench.start_services()
        try:
            import uvloop

            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        except ImportError:
            runner = asyncio.Runner()
        with runner:
            runner.run(bench.run())
    except KeyboardInterrupt:
        say("interrupted")
    finally:
        bench.stop_all()
    out = report(bench, args)
    if out:
        print_table(out)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        try:
            plot(bench, out, Path(args.plot))
        except Exception as exc:  # the figures matter more than the picture
            say(f"plot failed: {exc!r}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
