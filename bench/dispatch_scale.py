"""Does the cost of one dispatch decision grow with the backlog or with the number of tenants?

    .venv/bin/python bench/dispatch_scale.py                 # full size, --repeat 2, ~8 min
    .venv/bin/python bench/dispatch_scale.py --n 5000 --big-backlog 100000 --tenants-many 1000 \\
        --tenant-jobs 20000 --repeat 1                       # quick

Every scenario run gets its own PostgreSQL (fsync on) and Redis on free loopback ports in a temp
dir, one node (`python -m worcr_node node`, default settings: round_robin fairness, lane window
500, window budget 100,000 ids) and the same W worker processes (`python -m worcr.worker
bench.noop_jobs`, same concurrency and prefetch everywhere); the machinery (services, node and
worker processes, job log, CPU/RSS sampling, py-spy) is bench/throughput.py's. The node and the
workers run a `git archive` copy of --code (default HEAD), so that edits to the checkout during a
long run cannot mix code versions; the commit is recorded.

Scenarios (names are roles; the sizes are options and are recorded in each result):
  backlog_1k        --small-backlog (1,000) jobs of one tenant; measured over all of them
  backlog_1m        --big-backlog (1,000,000) jobs of one tenant; measured over the first --n
  tenants_10        --tenant-jobs (100,000) jobs over --tenants-few (10) tenants
  tenants_10k       the same 100,000 jobs over --tenants-many (10,000) tenants (10 jobs each)
  backlog_1k_topup  like backlog_1k / backlog_1m, but the driver enqueues one job per job
  backlog_1m_topup  started, so the backlog stays at its size, and both are measured over --n
Both tenant scenarios hold the same backlog, so only the number of ready lanes differs.

One run: start the services and the node; enqueue every job with `enqueue_many` (batches of
20,000; jobs of the tenant scenarios are interleaved, job i to tenant i mod T); VACUUM ANALYZE
and CHECKPOINT (so that neither autovacuum nor the checkpoint of a 1M-row insert lands in the
measured window: that would be a cost of having enqueued, not of dispatching); read Redis
used_memory and the number of ready lanes (SCARD of the ready set); then start the workers. The
no-op job appends its start time to a log; the dispatch rate is (w - 1) / (start of the w-th job
- start of the first) over the first w jobs started (w = the scenario's window), so the worker
boot and the enqueue are excluded. Measured over the same window: the node's CPU ms per job
(psutil, incl. its children) and its peak RSS; Redis used_memory is sampled every 0.5 s (peak) and
read when the window closes (end); Redis INFO commandstats gives the commands per 1,000 jobs
(ZPOPMIN counts claims, so `jobs_per_claim`). Every run also records the rate over the first
--small-backlog jobs (`rate_first_small`) and `other_cores_busy`: the CPU that processes outside
the run (tests, other benchmarks on this shared machine) used during the window; before starting
the workers, a run waits (at most --quiet-wait s) until they use at most --max-other-cores.

Which 1k-vs-1M comparison is fair? The 1k backlog drains after 1,000 jobs, ~0.3 s at ~4,000/s,
so it cannot be measured over --n jobs without enqueueing during the measurement; enqueueing
(topping up) adds node and PostgreSQL work to the window (here +20-40 % node CPU per job), so
topping up only the 1k run would bias the ratio towards 1M. Hence two fair pairs, both reported:
  same window:  backlog_1m's first 1,000 jobs vs backlog_1k's 1,000 jobs, nothing enqueued
                during the measurement (the issue's setup; short window, hence noisier);
  steady state: backlog_1m_topup vs backlog_1k_topup over --n jobs each, the same enqueue load
                in both (the top-up dilutes a difference in dispatch cost somewhat).
`backlog_1m` over --n jobs vs `backlog_1k` over 1,000 is reported too but mixes window lengths
(PostgreSQL dead index entries and window refills grow with the jobs processed, not the backlog).

Runs are interleaved (all scenarios, then all again: A B C A B C) --repeat times; each run and
the median are reported. Ratios are of medians; the target is ratio >= 0.8 (within 20 %).
Progress goes to stderr; the last stdout line is one JSON object, also written to --out
(default bench/results/dispatch_scale.json). --profile DIR records the node with py-spy during
each measured window (it slows the node: use separate runs for the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bench.throughput  # noqa: E402
from bench.throughput import (  # noqa: E402
    MB,
    Bench,
    LogReader,
    machine,
    say,
    start_profile,
    summarize_profile,
    tree_cpu,
    tree_rss,
)

ENQUEUE_CHUNK = 20_000
POLL_S = 0.02
MEM_EVERY_S = 0.5
TARGET = 0.8
SCENARIOS = (
    "backlog_1k",
    "backlog_1m",
    "tenants_10",
    "tenants_10k",
    "backlog_1k_topup",
    "backlog_1m_topup",
)
MEDIAN_KEYS = (
    "rate",
    "rate_first_small",
    "node_cpu_ms_per_job",
    "node_rss_mb",
    "redis_used_mb_after_enqueue",
    "redis_used_mb_peak",
    "redis_used_mb_end",
    "ready_lanes_after_enqueue",
    "ready_lanes_end",
    "other_cores_busy",
    "waited_for_quiet_s",
    "jobs_per_claim",
    "redis_cmd_us_per_job",
)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    jobs: int  # queued before the workers start
    tenants: int  # 0: no tenant given (the default tenant)
    window: int  # the rate is measured over the first `window` jobs started
    topup: bool = False  # enqueue one job per job started (the backlog keeps its size)


def scenarios(a: argparse.Namespace) -> dict[str, Scenario]:
    small, big, n = a.small_backlog, a.big_backlog, a.n
    return {
        "backlog_1k": Scenario("backlog_1k", small, 0, small),
        "backlog_1m": Scenario("backlog_1m", big, 0, n),
        "tenants_10": Scenario("tenants_10", a.tenant_jobs, a.tenants_few, n),
        "tenants_10k": Scenario("tenants_10k", a.tenant_jobs, a.tenants_many, n),
        "backlog_1k_topup": Scenario("backlog_1k_topup", small, 0, n, topup=True),
        "backlog_1m_topup": Scenario("backlog_1m_topup", big, 0, n, topup=True),
    }


def rate_over(starts: list[float], w: int) -> float | None:
    """Jobs started per second over the first `w` starts: (w - 1) / (t[w-1] - t[0])."""
    if w < 2 or len(starts) < w or starts[w - 1] <= starts[0]:
        return None
    return (w - 1) / (starts[w - 1] - starts[0])


class ScaleBench(Bench):
    """One scenario run on fresh services (bench/throughput.py's Bench, other phases)."""

    def __init__(self, args: argparse.Namespace, sc: Scenario, rep: int) -> None:
        super().__init__(args)
        self.sc, self.rep = sc, rep
        prefix = os.environ.get("WORCR_REDIS_PREFIX") or "worcr"
        self.ready_key = "{" + prefix + "}:ready"
        self.topped = 0  # jobs enqueued by the top-up
        self.topup_task: asyncio.Task[None] | None = None

    async def measure(self) -> dict[str, Any]:
        import asyncpg
        import redis

        from worcr import Client

        sc = self.sc
        self.res.update(asdict(sc), repeat=self.rep)
        await self.create_db()
        self.start_node()
        if self.node:
            self.res["node_cwd"] = psutil.Process(self.node.pid).cwd()
        self.sampler.start()
        r = redis.Redis.from_url(self.redis.url)
        db = await asyncpg.connect(self.db_url)
        client = await Client.connect(self.node_addr)
        try:
            await self.enqueue(client, 0, sc.jobs)
            await self.settle(db)
            self.res["queued_in_pg"] = await db.fetchval(
                "SELECT count(*) FROM worcr_jobs WHERE state = 'queued'"
            )
            self.res["redis_used_mb_after_enqueue"] = r.info("memory")["used_memory"] / MB
            self.res["ready_lanes_after_enqueue"] = r.scard(self.ready_key)
            self.res["redis_keys_after_enqueue"] = r.dbsize()
            if self.node:
                self.res["node_rss_after_enqueue_mb"] = tree_rss([self.node.pid]) / MB
            say(
                f"  {self.res['queued_in_pg']:,} queued, "
                f"{self.res['ready_lanes_after_enqueue']:,} ready lanes, Redis used_memory "
                f"{self.res['redis_used_mb_after_enqueue']:.1f} MB"
            )
            await self.process(client, r)
            self.stop_workers()
        finally:
            if self.topup_task is not None:
                self.topup_task.cancel()
            await client.close()
            await db.close()
        return self.res

    async def enqueue(self, client: Any, lo: int, hi: int) -> None:
        tenants = self.sc.tenants
        t0 = last = time.perf_counter()
        for a in range(lo, hi, ENQUEUE_CHUNK):
            b = min(hi, a + ENQUEUE_CHUNK)
            specs: list[dict[str, Any]] = [{"kind": "noop", "args": [i]} for i in range(a, b)]
            if tenants:
                for spec, i in zip(specs, range(a, b), strict=True):
                    spec["tenant"] = f"t{i % tenants}"
            await client.enqueue_many(specs)
            if time.perf_counter() - last > 5 or b == hi:
                last = time.perf_counter()
                say(f"  enqueued {b - lo:,}/{hi - lo:,} ({(b - lo) / (last - t0):,.0f} jobs/s)")

    async def settle(self, db: Any) -> None:
        """Let the node finish its Redis pushes; keep autovacuum and a checkpoint out of the
        measured window."""
        await asyncio.sleep(1.0)
        t0 = time.perf_counter()
        await db.execute("VACUUM ANALYZE")
        await db.execute("CHECKPOINT")
        self.res["vacuum_checkpoint_s"] = time.perf_counter() - t0
        await asyncio.sleep(1.0)

    async def process(self, client: Any, r: Any) -> None:
        sc, a = self.sc, self.args
        self.res["loadavg_before"] = round(os.getloadavg()[0], 2)
        say(
            f"  start {a.workers} workers; measure the first {sc.window:,} jobs started "
            f"(load average {self.res['loadavg_before']})"
        )
        reader = LogReader(self.logdir / "jobs.log")
        node_pid = self.node.pid if self.node else 0
        await self.wait_quiet()
        self.sampler.reset()
        self.start_workers()
        peak_mem, next_mem = 0, 0.0
        cpu0: tuple[int, float, float, float] | None = None
        cmds0: dict[str, Any] = {}
        profiler: subprocess.Popen[bytes] | None = None
        deadline = time.time() + a.timeout
        self.res["status"] = "ok"
        while True:
            reader.poll()
            done = len(reader.start)
            if cpu0 is None and done:
                cpu0 = (done, tree_cpu([node_pid]), time.time(), self.foreign_cpu())
                cmds0 = r.info("commandstats")
                if a.profile:
                    profiler = self.start_node_profile(node_pid)
            if sc.topup:
                self.top_up(client, done)
            if time.time() >= next_mem:
                next_mem = time.time() + MEM_EVERY_S
                peak_mem = max(peak_mem, r.info("memory")["used_memory"])
            if done >= sc.window:
                break
            if problem := self._stalled(done, sc.window, deadline):
                self.res["status"] = problem
                break
            await asyncio.sleep(POLL_S)
        used_end = r.info("memory")["used_memory"]
        self.res["redis_used_mb_end"] = used_end / MB
        self.res["redis_used_mb_peak"] = max(peak_mem, used_end) / MB
        self.res["ready_lanes_end"] = r.scard(self.ready_key)
        if cpu0 is not None and done > cpu0[0]:
            node_cpu = tree_cpu([node_pid]) - cpu0[1]
            self.res["node_cpu_ms_per_job"] = 1000 * node_cpu / (done - cpu0[0])
            wall = time.time() - cpu0[2]
            self.res["node_cores_busy"] = node_cpu / wall
            self.res["other_cores_busy"] = (self.foreign_cpu() - cpu0[3]) / wall
            self.redis_calls(cmds0, r.info("commandstats"), done - cpu0[0])
        self.res["node_rss_mb"] = self.sampler.peak.get("node", 0) / MB
        if profiler is not None:
            self.finish_node_profile(profiler)
        self.record_rates(reader)

    async def wait_quiet(self) -> None:
        """On a shared machine: wait (at most --quiet-wait s) until processes outside this run
        use less than --max-other-cores, so that fewer windows are measured under contention."""
        a = self.args
        t0 = time.time()
        while True:
            c0 = self.foreign_cpu()
            await asyncio.sleep(1.0)
            other = self.foreign_cpu() - c0
            if other <= a.max_other_cores or time.time() - t0 >= a.quiet_wait:
                break
            if time.time() - t0 < 1.5:
                say(f"  other processes use {other:.2f} cores: waiting up to {a.quiet_wait:.0f} s")
        self.res["other_cores_before"] = other
        self.res["waited_for_quiet_s"] = time.time() - t0 - 1.0

    def redis_calls(self, before: dict[str, Any], after: dict[str, Any], jobs: int) -> None:
        """Redis commands per 1,000 jobs over the window (INFO commandstats; commands run by
        Lua scripts count too: ZPOPMIN = claims, SMEMBERS = resyncs, EVALSHA = scripts)."""
        per_1k: dict[str, float] = {}
        usec = 0
        for key, stat in after.items():
            old = before.get(key, {"calls": 0, "usec": 0})
            calls = stat["calls"] - old["calls"]
            usec += stat["usec"] - old["usec"]
            if calls > 0 and key != "cmdstat_info":
                per_1k[key.removeprefix("cmdstat_")] = round(1000 * calls / jobs, 1)
        self.res["redis_calls_per_1k_jobs"] = dict(sorted(per_1k.items()))
        self.res["redis_cmd_us_per_job"] = usec / jobs
        claims = per_1k.get("zpopmin")
        self.res["jobs_per_claim"] = 1000 / claims if claims else None

    def foreign_cpu(self) -> float:
        """CPU seconds used machine-wide by processes outside this run (tests, other benches):
        their figure over the window says how disturbed it was."""
        t = psutil.cpu_times()
        busy = sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "steal", 0.0)
        ours = [self.node.pid if self.node else 0, self.pg.pid or 0, self.redis.pid or 0]
        ours += [w.pid for w in self.workers]
        return float(busy - tree_cpu(ours) - time.process_time())

    def top_up(self, client: Any, done: int) -> None:
        """Keep the backlog at its size: one job enqueued per job started (in the background)."""
        due = done - self.topped
        if due >= 50 and (self.topup_task is None or self.topup_task.done()):
            lo = self.sc.jobs + self.topped
            self.topped += due
            self.topup_task = asyncio.create_task(self.enqueue_quiet(client, lo, lo + due))

    async def enqueue_quiet(self, client: Any, lo: int, hi: int) -> None:
        await client.enqueue_many([{"kind": "noop", "args": [i]} for i in range(lo, hi)])

    def record_rates(self, reader: LogReader) -> None:
        sc = self.sc
        starts = sorted(reader.start.values())
        self.res["started"] = len(starts)
        self.res["duplicates"] = reader.dups
        self.res["topped_up"] = self.topped
        self.res["rate"] = rate_over(starts, sc.window)
        self.res["rate_first_small"] = rate_over(starts, self.args.small_backlog)
        if len(starts) >= sc.window:
            self.res["window_s"] = starts[sc.window - 1] - starts[0]
        say(
            f"  {sc.name}: {fmt(self.res['rate'])} jobs/s over the first {sc.window:,} "
            f"({fmt(self.res['rate_first_small'])} over the first {self.args.small_backlog:,}); "
            f"node {fmt(self.res.get('node_cpu_ms_per_job'), 3)} CPU ms/job, RSS "
            f"{self.res['node_rss_mb']:.0f} MB; Redis {self.res['redis_used_mb_end']:.1f} MB, "
            f"{self.res['ready_lanes_end']:,} ready lanes at the end; "
            f"{fmt(self.res.get('jobs_per_claim'), 1)} jobs per claim; other processes "
            f"{fmt(self.res.get('other_cores_busy'), 2)} cores busy"
        )

    def start_node_profile(self, pid: int) -> subprocess.Popen[bytes] | None:
        out = Path(self.args.profile) / f"{self.sc.name}-r{self.rep}"
        out.mkdir(parents=True, exist_ok=True)
        return start_profile(out, "node", pid)

    def finish_node_profile(self, profiler: subprocess.Popen[bytes]) -> None:
        profiler.send_signal(signal.SIGINT)
        try:
            profiler.wait(30)
        except subprocess.TimeoutExpired:
            profiler.kill()
        out = Path(self.args.profile) / f"{self.sc.name}-r{self.rep}"
        summary = summarize_profile(out / "node.collapsed", top=30)
        (out / "summary.txt").write_text(summary + "\n")
        print(summary, file=sys.stderr)


def fmt(x: Any, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def run_one(
    runner: asyncio.Runner, args: argparse.Namespace, sc: Scenario, rep: int
) -> dict[str, Any]:
    say(
        f"== {sc.name} (run {rep + 1}/{args.repeat}): {sc.jobs:,} jobs, "
        f"{sc.tenants or 1:,} tenant(s){', topped up' if sc.topup else ''}"
    )
    bench = ScaleBench(args, sc, rep)
    res: dict[str, Any] = {"name": sc.name, "repeat": rep, "status": "not run"}
    try:
        bench.start_services()
        res = runner.run(bench.measure())
    except Exception as exc:  # one failed run must not lose the others
        say(f"  {sc.name} failed: {exc!r}")
        res["status"] = f"error: {exc!r}"
    finally:
        bench.stop_all()
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in MEDIAN_KEYS:
        xs = [r[key] for r in runs if r.get(key) is not None and r.get("status") == "ok"]
        out[key] = round(statistics.median(xs), 4) if xs else None
    return out


def ratio(num: float | None, den: float | None) -> float | None:
    return round(num / den, 3) if num is not None and den else None


# name -> (numerator scenario, its figure, denominator scenario, its figure)
RATIOS: dict[str, tuple[str, str, str, str]] = {
    "backlog_1m / backlog_1k": ("backlog_1m", "rate_first_small", "backlog_1k", "rate"),
    "tenants_10k / tenants_10": ("tenants_10k", "rate", "tenants_10", "rate"),
    "backlog_1m_topup / backlog_1k_topup": (
        "backlog_1m_topup", "rate", "backlog_1k_topup", "rate"),
    "backlog_1m (first n) / backlog_1k": ("backlog_1m", "rate", "backlog_1k", "rate"),
    "node_cpu backlog_1m / backlog_1k": (
        "backlog_1m", "node_cpu_ms_per_job", "backlog_1k", "node_cpu_ms_per_job"),
    "node_cpu tenants_10k / tenants_10": (
        "tenants_10k", "node_cpu_ms_per_job", "tenants_10", "node_cpu_ms_per_job"),
}  # fmt: skip
HEADLINE = ("backlog_1m / backlog_1k", "tenants_10k / tenants_10")


def ratios(med: dict[str, dict[str, Any]], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Ratios of the medians, plus the same ratio within each repeat (runs r of both)."""

    def get(figures: dict[str, Any] | None, key: str) -> float | None:
        value = (figures or {}).get(key)
        return None if value is None else float(value)

    out: dict[str, Any] = {}
    pairs: dict[str, list[float | None]] = {}
    for label, (a, ka, b, kb) in RATIOS.items():
        out[label] = ratio(get(med.get(a), ka), get(med.get(b), kb))
        ra, rb = runs.get(a, []), runs.get(b, [])
        pairs[label] = [ratio(get(x, ka), get(y, kb)) for x, y in zip(ra, rb, strict=False)]
    measured = [out[k] for k in HEADLINE if out[k] is not None]
    out["target"] = f">= {TARGET} (within 20 %)"
    out["met"] = bool(measured) and all(x >= TARGET for x in measured)
    out["per_repeat"] = pairs
    return out


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = ap.add_argument
    add("--n", type=int, default=20_000, help="jobs measured in the big scenarios (20000)")
    add("--small-backlog", type=int, default=1_000, help="backlog_1k's jobs (1000)")
    add("--big-backlog", type=int, default=1_000_000, help="backlog_1m's jobs (1000000)")
    add("--tenant-jobs", type=int, default=100_000, help="jobs of each tenant scenario (100000)")
    add("--tenants-few", type=int, default=10, help="tenants of tenants_10 (10)")
    add("--tenants-many", type=int, default=10_000, help="tenants of tenants_10k (10000)")
    add("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset, in run order")
    add("--repeat", type=int, default=2, help="interleaved runs of every scenario (2)")
    add("--workers", type=int, default=2, help="worker processes (2)")
    add("--concurrency", type=int, default=10, help="per worker (10)")
    add("--prefetch", type=int, default=None, help="per worker (default: concurrency)")
    add(
        "--max-other-cores",
        type=float,
        default=0.25,
        help="start a window only when other processes use at most this many cores (0.25)",
    )
    add("--quiet-wait", type=float, default=180, help="... but wait at most this long, s (180)")
    add("--timeout", type=float, default=600, help="bound of one measured window, s (600)")
    add(
        "--node-env",
        action="append",
        default=[],
        metavar="VAR=VALUE",
        help="extra WORCR_* setting for the node (repeatable), e.g. WORCR_LANE_WINDOW=1000",
    )
    add(
        "--code",
        default="HEAD",
        metavar="REV",
        help="git revision the node and workers run, from a `git archive` copy (HEAD); "
        "'worktree': the checkout as it is",
    )
    add("--profile", default=None, metavar="DIR", help="py-spy the node: DIR/<scenario>-r<k>/")
    add("--out", default=str(ROOT / "bench" / "results" / "dispatch_scale.json"))
    add("--log-level", default="WARNING", help="node and worker log level")
    add("--dir", default=None, help="parent of the temp dirs (default: system temp)")
    add("--keep", action="store_true", help="keep the temp dirs (logs, data)")
    args = ap.parse_args()
    unknown = [s for s in args.scenarios.split(",") if s not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    if min(args.n, args.small_backlog) < 2 or args.n > min(args.big_backlog, args.tenant_jobs):
        ap.error("need 2 <= --n <= --big-backlog, --tenant-jobs and --small-backlog >= 2")
    for item in args.node_env:
        var, eq, _ = item.partition("=")
        if not eq or not var.startswith("WORCR_"):
            ap.error(f"--node-env {item!r}: expected WORCR_NAME=VALUE")
    return args


def git(*argv: str) -> str:
    return subprocess.run(
        ["git", *argv], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


def snapshot_code(args: argparse.Namespace) -> tuple[dict[str, Any], Path | None]:
    """Run the node and the workers from `git archive <rev>` in a temp dir, so that edits made
    to the checkout during a long run cannot mix code versions (--code worktree: the checkout)."""
    if args.code == "worktree":
        dirty = git("status", "--porcelain", "--", "worcr", "worcr_node", "bench/noop_jobs.py")
        return {"code": "worktree", "head": git("rev-parse", "HEAD"), "dirty": dirty}, None
    rev = git("rev-parse", "--verify", f"{args.code}^{{commit}}")
    snap = Path(tempfile.mkdtemp(prefix="worcr-code-", dir=args.dir))
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(snap)], input=archive.stdout, check=True)
    bench.throughput.ROOT = snap  # Bench.start_node/start_workers: cwd and PYTHONPATH
    sys.path.insert(0, str(snap))  # the driver's SDK (worcr.Client) and worcr_node too:
    for name in [m for m in sys.modules if m.partition(".")[0] in ("worcr", "worcr_node")]:
        del sys.modules[name]  # imported from the checkout already (the embedded servers)
    say(f"node and workers run commit {rev[:10]} from {snap}")
    return {"code": rev}, snap


def main() -> None:
    args = parse_args()
    code, snap = snapshot_code(args)
    for item in args.node_env:  # the node inherits the environment (Bench.start_node)
        var, _, value = item.partition("=")
        os.environ[var] = value
    table = scenarios(args)
    order = [table[name] for name in args.scenarios.split(",")]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    runs: dict[str, list[dict[str, Any]]] = {sc.name: [] for sc in order}
    t0 = time.time()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    try:
        with runner:
            for rep in range(args.repeat):
                for sc in order:
                    runs[sc.name].append(run_one(runner, args, sc, rep))
    except KeyboardInterrupt:
        say("interrupted")
    finally:
        if snap is not None and not args.keep:
            shutil.rmtree(snap, ignore_errors=True)
    med = {name: median_of(rs) for name, rs in runs.items()}
    res: dict[str, Any] = {
        "ratios": ratios(med, runs),
        "median": med,
        "runs": runs,
        "scenarios": {sc.name: asdict(sc) for sc in order},
        "workers": args.workers,
        "concurrency": args.concurrency,
        "prefetch": args.prefetch,
        "node_env": args.node_env,
        **code,
        "elapsed_s": round(time.time() - t0),
        "machine": machine(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    text = json.dumps(res)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    say(f"ratios: {json.dumps(res['ratios'])}")
    print(text, flush=True)


if __name__ == "__main__":
    main()
