"""Worcr job limits (issue 4): efficiency of each limit kind, the cost a limit adds to a dispatch,
and the throughput of unlimited tenants while another tenant is throttled.

    .venv/bin/python bench/limits.py             # --repeat 7 --eff-repeat 3, ~15 min
    .venv/bin/python bench/limits.py --quick     # smoke run, under 2 min

PostgreSQL (fsync on) and Redis are started once on free loopback ports in a temp dir (bench/
throughput.py's `Bench`); PostgreSQL gets track_commit_timestamp and track_wal_io_timing (and,
with --pg-stats, pg_stat_statements), which the concurrency run uses to time its commits. Every
run then gets a fresh database and an empty Redis (FLUSHALL; bench/fairness.py's `fresh_state`),
its limits written with `LimitStore.create` BEFORE the node starts, so the node's first pick is
already under them (POST /api/v1/limits validates with the same `parse_limit` and stores with
the same `LimitStore.create`, but needs a running node, whose first picks could precede its
policy reload), its own node process and --workers worker processes (`python -m worcr.worker
bench.limits_jobs`, --concurrency each, prefetch = concurrency: 2 x 10 slots, each worker
holding up to 20 jobs). The node and the workers run a `git archive` copy of --code (default
HEAD; bench/dispatch_scale.py's `snapshot_code`), so that edits to the checkout during the run
cannot mix code versions.

1. efficiency, per limit kind (--kinds), --repeat runs each, the median reported. One job limit
   on the jobs' kind (key "{kind}", match {"kinds": [...]}); the workers are connected before
   the backlog (--backlog-factor x what the limit allows over --skip + --measure seconds) is
   enqueued, so the limit, not the supply of jobs, binds throughout.
   - token_bucket (--rate per --period, --burst), fixed_window and sliding_window (--rate per
     --period); no-op jobs `paced`. The admission time of each job is `admitted_at` in
     PostgreSQL (Redis clock, ms, written by the claim). The steady window [a, b) starts at the
     first period boundary of the Redis clock at least --skip s after the first admission (the
     first burst / window is left out) and 1 s after the last enqueue call returned (a long
     enqueue competes for the CPU), and lasts --measure s rounded up to whole periods.
     achieved = admissions in [a, b) / (b - a); for sliding_window, n / the mean time from each
     admission in [a, b) to the n-th next one (n = the limit per period): it admits bursts of n
     that recur a little more than one period apart, so a count moves by up to one burst with
     where they fall against a and b (both measures are reported for every kind,
     `efficiency_count` and `efficiency_spacing`). efficiency = achieved / (n / period).
     Checked: the most admissions in any interval of one period (in aligned windows for
     fixed_window) against what the limit allows (n, plus the burst for the bucket).
   - concurrency (--conc-limit, jobs `hold` that sleep --hold-s): allowed = limit / hold-s;
     achieved = limit / a unit's cycle, the cycle being the mean time from each admission in
     [a, b) ([a, b) as above, without the period rounding) to the limit-th next one; in steady
     state that is the completion rate, but units move in batches (an ack batch frees several,
     one claim takes them), so a count of completions over [a, b) moves by a batch with where
     the edges cut them (it is reported too: `efficiency_count`, from worcr_attempts.finished_at;
     with 1 s jobs it reads 0.9 or 1.0). efficiency = achieved / allowed. The concurrency held is
     rebuilt from the attempts: [started_at, finished_at] (claim and ack transactions),
     [admitted_at, finished_at] and the worker's own [start, end] of each job (hold.log); mean
     over [a, b), max over the run: none may exceed the limit. The cycle is split into its
     steps, means (and p50s) over the attempts admitted in [a, b): admission -> claim statement
     starts (started_at) -> claim commit (commit timestamp of the running row, polled every
     20 ms) -> job starts on the worker -> ends -> ack statement starts (finished_at) -> ack
     commit (commit timestamp of the attempt row) -> next admission (the rest of the cycle).
     Per ack batch, that last step is split with the "limits-freed" announcements this driver
     hears: ack commit -> announced (WAL flush, Redis release, PUBLISH) and -> the next
     admission. Commit timestamps are taken before the WAL flush, so each flush falls in the
     step after its commit; the mean time per WAL flush in [a, b) is reported (pg_stat_wal).
   Node CPU over [a, b) and other processes' CPU (machine-wide, outside this run) are recorded.
   --eff-repeat runs per kind, the median reported.
2. dispatch_cost_ratio: --dispatch-jobs no-op jobs over --dispatch-tenants tenants, run with no
   limit and with a concurrency limit of 1,000,000 keyed on "{tenant}" that applies to every job
   and never binds. Each run is bench/dispatch_scale.py's measurement (`ScaleBench.enqueue/
   settle/process`): enqueue everything, VACUUM ANALYZE + CHECKPOINT, wait for a quiet machine,
   start the workers; node CPU (psutil: /proc/<pid>/stat, children included) per job and jobs
   started/s over all the jobs, Redis command time per job (INFO commandstats).
   dispatch_cost_ratio = median over the rounds of node CPU/job limited / unlimited; the
   throughput and Redis ratios the same way.
3. unthrottled_ratio: tenants t0..t9 ("B..K", --bk-tenants) with --bk-jobs no-op jobs in all,
   alone (no limit, no tenant A) vs with tenant A's --a-jobs backlog (kind `throttled`, enqueued
   first) under a token bucket of --a-rate/s (burst --a-burst) keyed on "{tenant}" matching
   tenant A only. Same measurement as 2, over B..K's jobs only (A's jobs do not write jobs.log);
   A's admissions during B..K's run are counted from PostgreSQL (throttled, not starved).
   unthrottled_ratio = median over the rounds of B..K's jobs/s with A throttled / alone; also
   with A's admissions added (A's own jobs take a share of the capacity). A control variant
   (--no-control skips it) has the same A backlog of a kind no worker runs and no limit: it
   separates the cost of A's backlog being there from the cost of serving it throttled.
   Parts 2 and 3 run --repeat rounds of all their variants on fresh databases, the order
   rotating from round to round (A B C, B C A, ...), so that drift hits each variant alike.
Targets (issue 4): efficiency >= 0.9 for every kind with a deep backlog; unthrottled_ratio >= 0.9.
Progress goes to stderr; the last line of stdout is one JSON object (`efficiency` keyed by kind,
`dispatch_cost_ratio`, `unthrottled_ratio`, `targets`, then every run), also written to --out.
--pg-stats adds the costliest statements of each efficiency window (pg_stat_statements);
--profile DIR records the node with py-spy during each measured window (both slow the node a
little: use separate runs for the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.dispatch_scale import ScaleBench, Scenario, fmt, ratio, snapshot_code  # noqa: E402
from bench.fairness import FairnessBench, other_activity  # noqa: E402
from bench.limits_jobs import HOLD_LOG  # noqa: E402
from bench.throughput import machine, say, tree_cpu  # noqa: E402

KINDS = ("concurrency", "token_bucket", "fixed_window", "sliding_window")
PARTS = ("efficiency", "dispatch", "unthrottled")
TARGET_EFFICIENCY = 0.9
TARGET_UNTHROTTLED = 0.9
A = "A"  # the throttled tenant
CHUNK = 20_000


# -- limits ----------------------------------------------------------------------------------------


def efficiency_limit(kind: str, a: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"name": f"eff-{kind}", "type": kind, "key": "{kind}"}
    if kind == "concurrency":
        body.update(limit=a.conc_limit, match={"kinds": ["hold"]})
    else:
        body.update(limit=a.rate, period=a.period, match={"kinds": ["paced"]})
    if kind == "token_bucket":
        body["burst"] = a.burst
    return body


NEVER_BINDS = {"name": "never-binds", "type": "concurrency", "limit": 1_000_000, "key": "{tenant}"}


def throttle_a(a: argparse.Namespace) -> dict[str, Any]:
    return {"name": "a-rate", "type": "token_bucket", "limit": a.a_rate, "period": 1.0,
            "burst": a.a_burst, "key": "{tenant}", "match": {"tenants": [A]}}  # fmt: skip


@dataclass(frozen=True)
class Variant:
    """One side of a comparison: its limits and tenant A's backlog (enqueued first, not in
    jobs.log): `throttled` jobs run by the workers, or `unserved` ones no worker runs."""

    name: str
    limits: list[dict[str, Any]] = field(default_factory=list)
    a_jobs: int = 0
    a_kind: str = "throttled"


# -- figures ---------------------------------------------------------------------------------------


def max_in_span(times: list[int], span: int) -> int:
    """The most of the sorted `times` in any half-open interval [t, t + span)."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - span:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def rate_figures(times: list[int], a: int, b: int, lim: dict[str, Any]) -> dict[str, Any]:
    """Admission times (Redis ms, sorted) of a rate limit over the steady window [a, b) (ms).

    Two measures of the achieved rate: the count over [a, b) / (b - a), and n / the mean time
    from each admission in [a, b) to the n-th next one (n = the limit per period). A sliding
    window admits bursts of n that recur a little more than one period apart; a count moves by up
    to one burst with where they fall against a and b, the spacing does not: it is the figure for
    sliding_window. The count is exact for fixed windows (a and b are window boundaries) and
    equals the spacing for the smooth token bucket."""
    period, n = round(1000 * float(lim["period"])), int(lim["limit"])
    spacing = lim["type"] == "sliding_window"
    inside = [t for t in times if a <= t < b]
    lags = [times[j + n] - times[j] for j in range(len(times) - n) if a <= times[j] < b]
    allowed = 1000 * n / period
    achieved = 1000 * n / statistics.fmean(lags) if lags else 0.0
    counted = 1000 * len(inside) / (b - a)
    per_period = [sum(1 for t in inside if a + k * period <= t < a + (k + 1) * period)
                  for k in range((b - a) // period)]  # fmt: skip
    if lim["type"] == "fixed_window":  # aligned windows: the limit is per window
        windows: dict[int, int] = {}
        for t in times:
            windows[t // period] = windows.get(t // period, 0) + 1
        worst, bound = max(windows.values(), default=0), n
    else:
        worst = max_in_span(times, period)
        bound = n + int(lim.get("burst", 0)) if lim["type"] == "token_bucket" else n
    return {
        "admitted_total": len(times),
        "window_s": round((b - a) / 1000, 3),
        "admitted_in_window": len(inside),
        "lags_measured": len(lags),
        "mean_lag_ms": round(statistics.fmean(lags), 2) if lags else None,
        "achieved_per_s": round(achieved if spacing else counted, 2),
        "allowed_per_s": round(allowed, 2),
        "efficiency": round((achieved if spacing else counted) / allowed, 4),
        "efficiency_count": round(counted / allowed, 4),
        "efficiency_spacing": round(achieved / allowed, 4),
        "per_period_in_window": per_period,
        "max_in_one_period": worst,
        "max_allowed_in_one_period": bound,
        "limit_respected": worst <= bound,
    }


def overlap_stats(spans: list[tuple[float, float]], a: float, b: float) -> dict[str, Any]:
    """Mean number of the intervals open over [a, b), and the most open at once (whole run)."""
    busy = sum(max(0.0, min(e, b) - max(s, a)) for s, e in spans)
    events = sorted([(s, 1) for s, e in spans] + [(e, -1) for s, e in spans])  # ends first on ties
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return {"mean": round(busy / (b - a), 3), "max": peak}


def read_hold_log(path: Path) -> dict[int, tuple[float, float]]:
    out: dict[int, tuple[float, float]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            i, s, e = line.split()
            out.setdefault(int(i), (float(s), float(e)))
    return out


def mean_ms(xs: list[float]) -> float | None:
    return round(1000 * statistics.fmean(xs), 2) if xs else None


class Attempt(NamedTuple):
    """One attempt of a concurrency run, times in s: Redis admission (ms resolution), claim
    transaction start and commit, ack transaction start and commit (None while running)."""

    i: int
    admitted: float
    started: float
    claim_commit: float | None
    finished: float | None
    ack_commit: float | None


STEPS = ("claim_tx", "claim_commit", "to_worker", "runs", "ack_tx", "ack_commit")


def cycle_split(
    rows: list[Attempt], worker: dict[int, tuple[float, float]], a: float, b: float
) -> dict[str, list[float]]:
    """The steps of a unit's cycle (s), for the attempts admitted in [a, b) whose every time is
    known: admission -> claim transaction starts -> commits -> the job starts on the worker ->
    ends -> ack transaction starts -> commits."""
    steps: dict[str, list[float]] = {k: [] for k in STEPS}
    for r in rows:
        w = worker.get(r.i)
        if w is None or r.claim_commit is None or r.finished is None or r.ack_commit is None:
            continue
        if a <= r.admitted < b:
            times = (r.admitted, r.started, r.claim_commit, w[0], w[1], r.finished, r.ack_commit)
            for k, t0, t1 in zip(STEPS, times, times[1:], strict=False):
                steps[k].append(t1 - t0)
    return steps


def release_steps(rows: list[Attempt], freed: list[float], a: float, b: float) -> dict[str, Any]:
    """After each ack commit c in [a, b) (one per ack batch): the first "freed" announcement m
    the driver heard after it (WAL flush, Redis release script, PUBLISH) and the first admission
    A after c: A - c is how long the units stayed unused, A - m the node's reaction (unpark,
    claim_limited), negative when it claimed before this driver heard the announcement."""
    announced, idle, reacted = [], [], []
    admissions = sorted(r.admitted for r in rows)
    for c in sorted({r.ack_commit for r in rows if r.ack_commit is not None}):
        k = bisect.bisect_left(freed, c)
        j = bisect.bisect_left(admissions, c)
        if not a <= c < b or k == len(freed) or j == len(admissions):
            continue
        announced.append(freed[k] - c)
        idle.append(admissions[j] - c)
        reacted.append(admissions[j] - freed[k])
    return {"ack_commit_to_announced": announced, "ack_commit_to_admission": idle,
            "announced_to_admission": reacted}  # fmt: skip


def concurrency_figures(
    rows: list[Attempt], worker: dict[int, tuple[float, float]], freed: list[float], a: float,
    b: float, now: float, lim: dict[str, Any], hold_s: float,
) -> dict[str, Any]:  # fmt: skip
    n = int(lim["limit"])
    finished = sum(1 for r in rows if r.finished is not None and a <= r.finished < b)
    counted = finished / (b - a)
    allowed = n / hold_s
    pg = overlap_stats([(r.started, r.finished or now) for r in rows], a, b)
    held = overlap_stats([(r.admitted, r.finished or now) for r in rows], a, b)
    # admitted_at is the Redis time truncated to the ms: the admission happened within the
    # following ms, so for the max an interval starts at its latest possible moment
    latest = [(r.admitted + 0.000999, r.finished or now) for r in rows]
    held["max"] = overlap_stats(latest, a, b)["max"]
    ran = overlap_stats(list(worker.values()), a, b)
    # a unit's cycle: the mean time from each admission in [a, b) to the n-th next one; units
    # move in batches (one ack batch frees several, one claim takes them), so a count of
    # completions over [a, b) moves by a batch with where the window's edges cut them
    adm = sorted(r.admitted for r in rows)
    lags = [adm[j + n] - adm[j] for j in range(len(adm) - n) if a <= adm[j] < b]
    cycle = statistics.fmean(lags) if lags else None
    achieved = n / cycle if cycle else 0.0
    steps = cycle_split(rows, worker, a, b)
    split: dict[str, Any] = {k: mean_ms(v) for k, v in steps.items()}
    if cycle is not None:
        known = sum(v for v in split.values() if v is not None)
        split["ack_commit_to_next_admission"] = round(1000 * cycle - known, 2)
    steps.update(release_steps(rows, freed, a, b))
    for k in ("ack_commit_to_announced", "ack_commit_to_admission", "announced_to_admission"):
        split[f"batch_{k}"] = mean_ms(steps[k])
    p50 = {k: round(1000 * statistics.median(v), 2) if v else None for k, v in steps.items()}
    return {
        "attempts": len(rows),
        "window_s": round(b - a, 3),
        "finished_in_window": finished,
        "achieved_per_s": round(achieved, 2),
        "allowed_per_s": round(allowed, 2),
        "efficiency": round(achieved / allowed, 4),
        "finished_per_s": round(counted, 2),
        "efficiency_count": round(counted / allowed, 4),
        "concurrency_pg_mean": pg["mean"],
        "concurrency_pg_max": pg["max"],
        "concurrency_held_mean": held["mean"],
        "concurrency_held_max": held["max"],
        "concurrency_running_mean": ran["mean"],
        "concurrency_running_max": ran["max"],
        "limit": n,
        "limit_respected": max(pg["max"], held["max"], ran["max"]) <= n,
        "cycle_ms": round(1000 * cycle, 2) if cycle else None,
        "cycle_split_ms": split,
        "cycle_split_p50_ms": p50,
        "cycle_split_n": {k: len(v) for k, v in steps.items()},
    }


# -- the benchmark ---------------------------------------------------------------------------------


class LimitsBench(ScaleBench):
    """bench/dispatch_scale.py's measurement (enqueue, settle, process) and bench/fairness.py's
    run handling (a fresh database and an empty Redis per run on services started once, one
    node per run, workers connected before the enqueue)."""

    job_module = "bench.limits_jobs"
    fresh_db = FairnessBench.fresh_state  # fresh database (fairness round_robin), FLUSHALL
    drop_db = FairnessBench.drop_db
    stop_node = FairnessBench.stop_node
    wait_workers = FairnessBench.wait_workers
    start_and_wait_workers = FairnessBench.start_and_wait_workers

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args, Scenario("setup", 0, 0, 0), 0)
        self.root = self.tmp
        self.a_jobs, self.a_kind = 0, "throttled"  # tenant A's backlog, enqueued first
        self.out: dict[str, Any] = {}  # part -> runs

    def stop_all(self) -> None:
        self.tmp = self.root
        super().stop_all()

    def begin(self, name: str, rep: int, sc: Scenario | None = None) -> None:
        self.sc, self.rep = sc or Scenario(name, 0, 0, 0), rep
        self.res = {"name": name, "repeat": rep, "status": "ok"}
        self.topped, self.topup_task, self.a_jobs = 0, None, 0
        self.tmp = self.root / f"{name}-r{rep}"
        self.logdir = self.tmp / "joblog"
        self.logdir.mkdir(parents=True)

    async def fresh_state(self, limits: list[dict[str, Any]]) -> None:
        from bench.fairness import policy_store
        from worcr_node.limits.model import parse_limit
        from worcr_node.limits.store import LimitStore
        from worcr_node.store.pg import PgStore
        from worcr_node.store.redis_index import RedisIndex

        await self.fresh_db("round_robin")
        if self.args.pg_stats:
            import asyncpg

            conn = await asyncpg.connect(self.db_url)
            try:
                await conn.execute("CREATE EXTENSION pg_stat_statements")
            finally:
                await conn.close()
        store, index = PgStore(self.db_url), RedisIndex(self.redis.url, "worcr")
        await store.open()
        try:
            ls = LimitStore(policy_store(store, index))
            for body in limits:
                await ls.create(parse_limit(body))
            stored = [x.to_json() for x in await ls.list()]
        finally:
            await store.close()
            await index.close()
        if len(stored) != len(limits):
            sys.exit(f"limits not stored: wanted {limits}, the database says {stored}")
        self.res["limits"] = stored

    async def teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.stop_workers()
        self.stop_node()
        with contextlib.suppress(Exception):
            await self.drop_db()
        self.res["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)

    # efficiency --------------------------------------------------------------------------------

    async def efficiency_run(self, kind: str, rep: int) -> dict[str, Any]:
        import asyncpg

        from worcr import Client

        a = self.args
        self.begin(f"eff_{kind}", rep)
        lim = efficiency_limit(kind, a)
        allowed = a.conc_limit / a.hold_s if kind == "concurrency" else a.rate / a.period
        backlog = math.ceil(allowed * (a.skip + a.measure) * a.backlog_factor)
        say(f"== efficiency {kind} (run {rep + 1}/{a.eff_repeat}): {lim}, backlog {backlog:,}")
        try:
            await self.fresh_state([lim])
            self.start_node()
            await self.start_and_wait_workers()
            db = await asyncpg.connect(self.db_url)
            client = await Client.connect(self.node_addr)
            try:
                if kind == "concurrency":
                    specs = [{"kind": "hold", "args": [i, a.hold_s]} for i in range(backlog)]
                else:
                    specs = [{"kind": "paced", "args": [i]} for i in range(backlog)]
                await self.wait_quiet()
                t0 = time.time()
                for lo in range(0, backlog, CHUNK):
                    await client.enqueue_many(specs[lo : lo + CHUNK])
                self.res["enqueue_s"] = round(time.time() - t0, 3)
                await self.measure_efficiency(db, kind, lim, time.time())
            finally:
                await client.close()
                await db.close()
        except Exception as exc:  # one failed run must not lose the others
            say(f"  {kind} failed: {exc!r}")
            self.res["status"] = f"error: {exc!r}"
        finally:
            await self.teardown()
        return dict(self.res)

    async def measure_efficiency(
        self, db: Any, kind: str, lim: dict[str, Any], enqueued: float
    ) -> None:
        """The steady window starts --skip s after the first admission, and 1 s after the whole
        backlog is enqueued (a long enqueue takes CPU from the node and the workers)."""
        a = self.args
        first = await self.first_admission(db)
        start = max(first + a.skip, enqueued + 1.0)
        if kind == "concurrency":
            lo, hi = start, start + a.measure
        else:  # whole periods of the Redis clock (ms), from the first boundary after the start
            p = round(1000 * a.period)
            lo = math.ceil(round(1000 * start) / p) * p / 1000
            hi = lo + math.ceil(round(1000 * a.measure) / p) * p / 1000
        watch: list[asyncio.Task[Any]] = []
        if kind == "concurrency":
            until = hi + a.hold_s + 0.5
            watch = [asyncio.create_task(self.watch_claims(until)),
                     asyncio.create_task(self.watch_freed(until))]  # fmt: skip
        try:
            await self.steady_window(db, kind, lim, first, lo, hi, watch)
        finally:
            for task in watch:
                task.cancel()

    async def steady_window(
        self, db: Any, kind: str, lim: dict[str, Any], first: float, lo: float, hi: float,
        watch: list[asyncio.Task[Any]],
    ) -> None:  # fmt: skip
        a = self.args
        node_pid = self.node.pid if self.node else 0
        await asyncio.sleep(max(0.0, lo - time.time()))
        cpu0, others0 = tree_cpu([node_pid]), self.foreign_cpu()
        await self.pg_reset(db)
        profiler = self.start_node_profile(node_pid) if a.profile else None
        await asyncio.sleep(max(0.0, hi - time.time()))
        node_cpu, others = tree_cpu([node_pid]) - cpu0, self.foreign_cpu() - others0
        self.res["pg"] = await self.pg_figures(db, hi - lo)
        if profiler is not None:
            self.finish_node_profile(profiler)
        # the window's last attempts finish and are acked; the n-th admission after the window's
        # last one is in (rate kinds: the spacing measure)
        await asyncio.sleep((a.hold_s if kind == "concurrency" else a.period) + 1.0)
        left = await db.fetchval("SELECT count(*) FROM worcr_jobs WHERE state = 'queued'")
        if kind == "concurrency":
            claims, freed = await asyncio.gather(*watch)
            fig = await self.concurrency_rows(db, lo, hi, time.time(), lim, claims, freed)
        else:
            rows = await db.fetch(
                "SELECT extract(epoch FROM admitted_at)::float8 AS t FROM worcr_jobs "
                "WHERE admitted_at IS NOT NULL ORDER BY 1"
            )
            times = [round(1000 * r["t"]) for r in rows]
            fig = rate_figures(times, round(1000 * lo), round(1000 * hi), lim)
        self.res.update(fig)
        self.res.update(
            first_admission_to_window_s=round(lo - first, 3),
            queued_left=left,
            node_cores_busy=round(node_cpu / (hi - lo), 3),
            other_cores_busy=round(others / (hi - lo), 3),
            other_activity=sorted(other_activity()),
        )
        if not left:
            self.res["status"] = "backlog drained before the end: raise --backlog-factor"
        say(
            f"  {kind}: {fig['achieved_per_s']}/s of {fig['allowed_per_s']}/s allowed = "
            f"efficiency {fig['efficiency']} over {fig['window_s']} s; limit respected: "
            f"{fig['limit_respected']}; node {self.res['node_cores_busy']} cores, other "
            f"processes {self.res['other_cores_busy']} cores; {left:,} jobs still queued"
        )

    async def first_admission(self, db: Any) -> float:
        deadline = time.time() + 30
        while time.time() < deadline:
            t = await db.fetchval(
                "SELECT extract(epoch FROM min(admitted_at))::float8 FROM worcr_jobs"
            )
            if t is not None:
                return float(t)
            await asyncio.sleep(0.05)
        raise RuntimeError("no job admitted within 30 s")

    async def concurrency_rows(
        self, db: Any, lo: float, hi: float, now: float, lim: dict[str, Any],
        claims: dict[Any, float], freed: list[float],
    ) -> dict[str, Any]:  # fmt: skip
        import msgpack

        def secs(col: str) -> str:
            return f"extract(epoch FROM {col})::float8"

        rows = await db.fetch(
            f"SELECT j.id, j.args, {secs('a.admitted_at')} AS adm, {secs('a.started_at')} AS st, "
            f"{secs('a.finished_at')} AS fin, {secs('pg_xact_commit_timestamp(a.xmin)')} AS ack "
            "FROM worcr_attempts a JOIN worcr_jobs j ON j.id = a.job_id "
            "WHERE a.outcome = 'completed' UNION ALL "
            f"SELECT id, args, {secs('admitted_at')}, {secs('started_at')}, NULL, NULL "
            "FROM worcr_jobs WHERE state = 'running'"
        )
        spans = [
            Attempt(msgpack.unpackb(r["args"])[0], r["adm"], r["st"], claims.get(r["id"]),
                    r["fin"], r["ack"])
            for r in rows
        ]  # fmt: skip
        worker = read_hold_log(self.logdir / HOLD_LOG)
        fig = concurrency_figures(spans, worker, freed, lo, hi, now, lim, self.args.hold_s)
        fig["claim_commits_seen"] = len(claims)
        return fig

    async def watch_freed(self, until: float) -> list[float]:
        """When each "limits-freed" announcement reached a subscriber (this driver)."""
        import redis.asyncio as aioredis

        channel = self.ready_key.rsplit(":", 1)[0] + ":limits-freed"
        seen: list[float] = []
        r = aioredis.Redis.from_url(self.redis.url)
        pubsub = r.pubsub()
        try:
            await pubsub.subscribe(channel)
            while time.time() < until:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                if msg is not None:
                    seen.append(time.time())
        finally:
            await pubsub.aclose()
            await r.aclose()
        return seen

    async def watch_claims(self, until: float) -> dict[Any, float]:
        """Commit time of each job's claim (pg_xact_commit_timestamp of the running row: the
        ack overwrites it), read every 20 ms while the jobs run."""
        import asyncpg

        seen: dict[Any, float] = {}
        conn = await asyncpg.connect(self.db_url)
        try:
            while time.time() < until:
                for r in await conn.fetch(
                    "SELECT id, extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 AS t "
                    "FROM worcr_jobs WHERE state = 'running'"
                ):
                    seen.setdefault(r["id"], r["t"])
                await asyncio.sleep(0.02)
        finally:
            await conn.close()
        return seen

    # dispatch cost and unthrottled tenants: bench/dispatch_scale.py's measurement --------------

    async def scale_run(self, v: Variant, rep: int, sc: Scenario) -> dict[str, Any]:
        import asyncpg
        import redis

        from worcr import Client

        self.begin(v.name, rep, dataclasses.replace(sc, name=v.name))
        self.a_jobs, self.a_kind = v.a_jobs, v.a_kind
        a_text = f", tenant {A} {v.a_jobs:,} jobs of kind {v.a_kind}" if v.a_jobs else ""
        say(f"== {v.name} (run {rep + 1}/{self.args.repeat}): {sc.jobs:,} jobs over "
            f"{sc.tenants} tenants{a_text}; limits {v.limits}")  # fmt: skip
        self.res.update(jobs=sc.jobs, tenants=sc.tenants, a_jobs=v.a_jobs, a_kind=v.a_kind)
        try:
            await self.fresh_state(v.limits)
            self.start_node()
            r = redis.Redis.from_url(self.redis.url)
            db = await asyncpg.connect(self.db_url)
            client = await Client.connect(self.node_addr)
            try:
                await self.enqueue(client, 0, sc.jobs)
                await self.settle(db)
                await self.process(client, r)
                if v.a_jobs:
                    await self.a_figures(db)
            finally:
                await client.close()
                await db.close()
                r.close()
        except Exception as exc:  # one failed run must not lose the others
            say(f"  {v.name} failed: {exc!r}")
            self.res["status"] = f"error: {exc!r}"
        finally:
            await self.teardown()
        return {k: round(x, 4) if isinstance(x, float) else x for k, x in self.res.items()}

    async def enqueue(self, client: Any, lo: int, hi: int) -> None:
        """Tenant A's backlog first (not in jobs.log), then the scenario's."""
        for i in range(0, self.a_jobs, CHUNK):
            ids = range(i, min(self.a_jobs, i + CHUNK))
            await client.enqueue_many([{"kind": self.a_kind, "args": [j], "tenant": A}
                                       for j in ids])  # fmt: skip
        if self.a_jobs:
            say(f"  enqueued tenant {A}'s {self.a_jobs:,} jobs")
        await super().enqueue(client, lo, hi)

    async def a_figures(self, db: Any) -> None:
        """Tenant A's admissions while B..K's jobs started: it was throttled, not starved."""
        row = await db.fetchrow(
            "WITH w AS (SELECT min(started_at) lo, max(started_at) hi FROM worcr_jobs "
            "WHERE kind = 'noop') SELECT count(*) FILTER (WHERE j.admitted_at >= w.lo AND "
            "j.admitted_at <= w.hi) AS n, extract(epoch FROM w.hi - w.lo)::float8 AS span, "
            "count(j.admitted_at) AS total FROM worcr_jobs j, w WHERE j.tenant = $1 "
            "GROUP BY w.lo, w.hi",
            A,
        )
        if row is not None and row["span"]:
            self.res["a_admitted_during_bk"] = row["n"]
            self.res["a_rate_during_bk_per_s"] = row["n"] / row["span"]
            self.res["a_admitted_total"] = row["total"]
            say(f"  tenant {A}: {row['n']} admitted during B..K ({row['n'] / row['span']:.1f}/s)")

    # the whole benchmark -----------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Every part; the runs land in self.out as they end (an interrupt keeps them)."""
        a = self.args
        self.sampler.start()
        await self.configure_pg()
        if "efficiency" in a.parts:
            eff: dict[str, list[dict[str, Any]]] = self.out.setdefault("efficiency", {})
            for kind in a.kinds:
                for rep in range(a.eff_repeat):
                    eff.setdefault(kind, []).append(await self.efficiency_run(kind, rep))
        if "dispatch" in a.parts:
            sc = Scenario("dispatch", a.dispatch_jobs, a.dispatch_tenants, a.dispatch_jobs)
            await self.rounds("dispatch", sc, Variant("no_limit"),
                              Variant("never_binding_limit", [NEVER_BINDS]))  # fmt: skip
        if "unthrottled" in a.parts:
            sc = Scenario("bk", a.bk_jobs, a.bk_tenants, a.bk_jobs)
            variants = [
                Variant("bk_alone"),
                Variant("bk_with_a_throttled", [throttle_a(a)], a.a_jobs, "throttled"),
            ]
            if a.control:
                variants.append(Variant("bk_beside_a_unserved", [], a.a_jobs, "unserved"))
            await self.rounds("unthrottled", sc, *variants)  # fmt: skip
        return self.out

    async def configure_pg(self) -> None:
        """track_commit_timestamp (the concurrency run splits a unit's cycle at the commits of
        the claim and of the ack) and track_wal_io_timing (WAL flush time per window); with
        --pg-stats also pg_stat_statements (statement time per window). Needs a restart."""
        import asyncpg

        settings = {"track_commit_timestamp": "on", "track_wal_io_timing": "on"}
        if self.args.pg_stats:
            settings["shared_preload_libraries"] = "pg_stat_statements"
        conn = await asyncpg.connect(self.pg.dsn)
        try:
            for name, value in settings.items():
                await conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        finally:
            await conn.close()
        self.pg.restart()
        if self.args.pg_stats:  # known once the library is loaded
            conn = await asyncpg.connect(self.pg.dsn)
            try:
                await conn.execute("ALTER SYSTEM SET pg_stat_statements.track_planning = on")
                await conn.execute("SELECT pg_reload_conf()")
            finally:
                await conn.close()

    async def pg_reset(self, db: Any) -> None:
        await db.execute("SELECT pg_stat_reset_shared('wal')")
        if self.args.pg_stats:
            await db.execute("SELECT pg_stat_statements_reset()")

    async def pg_figures(self, db: Any, seconds: float) -> dict[str, Any]:
        """WAL flushes over the window (the durable commits), and with --pg-stats the statements
        that took the most time."""
        wal = await db.fetchrow("SELECT wal_records, wal_sync, wal_sync_time FROM pg_stat_wal")
        out: dict[str, Any] = {
            "wal_syncs_per_s": round(wal["wal_sync"] / seconds, 1),
            "wal_sync_ms_mean": round(wal["wal_sync_time"] / max(1, wal["wal_sync"]), 3),
        }
        if self.args.pg_stats:
            rows = await db.fetch(
                "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 90) AS q, calls, "
                "mean_exec_time, mean_plan_time, total_exec_time + total_plan_time AS total "
                "FROM pg_stat_statements ORDER BY total DESC LIMIT 6"
            )
            out["statements"] = [
                {"query": r["q"], "calls": r["calls"], "exec_ms": round(r["mean_exec_time"], 3),
                 "plan_ms": round(r["mean_plan_time"], 3),
                 "share_of_window": round(r["total"] / 1000 / seconds, 4)}
                for r in rows
            ]  # fmt: skip
        return out

    async def rounds(self, part: str, sc: Scenario, *variants: Variant) -> None:
        """--repeat rounds of every variant (the first is the baseline), the order rotating from
        round to round (A B C, B C A, C A B, ...) so that drift hits each the same way."""
        runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
        self.out[part] = runs
        for rep in range(self.args.repeat):
            k = rep % len(variants)
            for v in variants[k:] + variants[:k]:
                runs[v.name].append(await self.scale_run(v, rep, sc))


# -- report ----------------------------------------------------------------------------------------


def med(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return round(statistics.median(vals), 4) if vals else None


def ok(r: dict[str, Any]) -> bool:
    return r.get("status") == "ok"


def round_ratios(runs: dict[str, list[dict[str, Any]]], keys: dict[str, str]) -> dict[str, Any]:
    """For each variant after the first (the baseline): the ratios variant / baseline of the
    figures in `keys` (label -> figure) within each round, and their median; plus the medians
    of every variant's own figures."""
    (base, b_runs), *others = runs.items()
    out: dict[str, Any] = {"baseline": base}
    for name, t_runs in others:
        out[name] = {}
        for label, key in keys.items():
            per_round = [ratio(fig(t, key), fig(b, key)) if ok(t) and ok(b) else None
                         for b, t in zip(b_runs, t_runs, strict=False)]  # fmt: skip
            out[name][label] = {"median": med(per_round), "per_round": per_round}
    out["medians"] = {
        name: {key: med([fig(r, key) for r in rs if ok(r)])
               for key in ("rate", "rate_incl_a", "node_cpu_ms_per_job", "redis_cmd_us_per_job",
                           "other_cores_busy", "a_rate_during_bk_per_s")}
        for name, rs in runs.items()
    }  # fmt: skip
    return out


def fig(r: dict[str, Any], key: str) -> float | None:
    """A run's figure; `rate_incl_a`: B..K's jobs/s plus tenant A's admissions/s meanwhile."""
    if key == "rate_incl_a" and r.get("rate") is not None:
        return float(r["rate"]) + float(r.get("a_rate_during_bk_per_s") or 0.0)
    value = r.get(key)
    return None if value is None else float(value)


def report(raw: dict[str, Any], args: argparse.Namespace, code: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"efficiency": {}, "dispatch_cost_ratio": None, "unthrottled_ratio": None}
    for kind, runs in raw.get("efficiency", {}).items():
        out["efficiency"][kind] = med([r.get("efficiency") for r in runs if ok(r)])
    if "dispatch" in raw:
        d = round_ratios(
            raw["dispatch"],
            {
                "node_cpu_per_job_ratio": "node_cpu_ms_per_job",
                "throughput_ratio": "rate",
                "redis_us_per_job_ratio": "redis_cmd_us_per_job",
            },
        )
        limited = d.get("never_binding_limit", {})
        out["dispatch_cost_ratio"] = limited.get("node_cpu_per_job_ratio", {}).get("median")
        out["dispatch_throughput_ratio"] = limited.get("throughput_ratio", {}).get("median")
        out["dispatch"] = d
    if "unthrottled" in raw:
        u = round_ratios(
            raw["unthrottled"],
            {
                "throughput_ratio": "rate",
                "throughput_incl_a_ratio": "rate_incl_a",
                "node_cpu_per_job_ratio": "node_cpu_ms_per_job",
            },
        )
        throttled = u.get("bk_with_a_throttled", {})
        out["unthrottled_ratio"] = throttled.get("throughput_ratio", {}).get("median")
        out["unthrottled"] = u
    eff = out["efficiency"]
    runs = [r for rs in raw.get("efficiency", {}).values() for r in rs]
    out["targets"] = {
        "efficiency_at_least": TARGET_EFFICIENCY,
        "efficiency_met": {k: v is not None and v >= TARGET_EFFICIENCY for k, v in eff.items()},
        "unthrottled_at_least": TARGET_UNTHROTTLED,
        "unthrottled_met": (out["unthrottled_ratio"] or 0) >= TARGET_UNTHROTTLED,
        "limits_respected_in_every_run": all(r.get("limit_respected") for r in runs if ok(r)),
    }
    out["efficiency_runs"] = raw.get("efficiency", {})
    out["runs"] = {k: v for k, v in raw.items() if k != "efficiency"}
    out["setup"] = {k: v for k, v in vars(args).items() if k not in ("dir", "keep")}
    out.update(code, machine=machine(), command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    return out


def print_summary(out: dict[str, Any]) -> None:
    for kind, runs in out["efficiency_runs"].items():
        effs = [r.get("efficiency") for r in runs]
        extra = ""
        if kind == "concurrency" and runs:
            r = runs[0]
            extra = (f"; mean/max concurrency held {r.get('concurrency_held_mean')}/"
                     f"{r.get('concurrency_held_max')}, cycle {r.get('cycle_ms')} ms "
                     f"{r.get('cycle_split_ms')}")  # fmt: skip
        say(f"efficiency {kind}: median {out['efficiency'][kind]} (runs {effs}){extra}")
    for part in ("dispatch", "unthrottled"):
        for name, figs in out.get(part, {}).items():
            if name not in ("baseline", "medians"):
                say(f"{part} {name} / {out[part]['baseline']}: " + ", ".join(
                    f"{k} {v['median']} {v['per_round']}" for k, v in figs.items()))  # fmt: skip
    say(f"dispatch_cost_ratio {fmt(out['dispatch_cost_ratio'], 3)}, unthrottled_ratio "
        f"{fmt(out['unthrottled_ratio'], 3)}; targets {out['targets']}")  # fmt: skip


# -- main ------------------------------------------------------------------------------------------


QUICK = {"measure": 3.0, "skip": 1.0, "repeat": 1, "eff_repeat": 1, "dispatch_jobs": 3000,
         "bk_jobs": 3000, "a_jobs": 5000, "quiet_wait": 3.0}  # fmt: skip


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = ap.add_argument
    add("--quick", action="store_true", help="smoke run: " + json.dumps(QUICK))
    add("--parts", default=",".join(PARTS), help="comma-separated subset of " + ",".join(PARTS))
    add("--kinds", default=",".join(KINDS), help="limit kinds of the efficiency part")
    add("--repeat", type=int, default=7, help="rounds of the dispatch and unthrottled parts (7)")
    add("--eff-repeat", type=int, default=3, help="efficiency runs per kind (3)")
    add("--rate", type=int, default=400, help="rate limits: jobs per --period (400)")
    add("--period", type=float, default=1.0, help="rate limits: period, s (1)")
    add("--burst", type=int, default=40, help="token bucket burst (40)")
    add("--conc-limit", type=int, default=8, help="concurrency limit (8)")
    add("--hold-s", type=float, default=0.1, help="duration of a concurrency job, s (0.1)")
    add("--skip", type=float, default=2.0, help="s after the first admission left out (2)")
    add("--measure", type=float, default=10.0, help="steady window, s (10)")
    add("--backlog-factor", type=float, default=3.0, help="backlog / allowed (3)")
    add("--dispatch-jobs", type=int, default=20_000, help="jobs of a dispatch-cost run (20000)")
    add("--dispatch-tenants", type=int, default=10, help="their tenants (10)")
    add("--bk-jobs", type=int, default=20_000, help="jobs of tenants B..K in all (20000)")
    add("--bk-tenants", type=int, default=10, help="unlimited tenants (10)")
    add("--a-jobs", type=int, default=50_000, help="tenant A's throttled backlog (50000)")
    add("--a-rate", type=int, default=50, help="tenant A's token bucket, jobs/s (50)")
    add("--a-burst", type=int, default=10, help="... and its burst (10)")
    add(
        "--no-control",
        dest="control",
        action="store_false",
        help="unthrottled part: skip the control (A's backlog of a kind no worker runs)",
    )
    add("--workers", type=int, default=2, help="worker processes (2)")
    add("--concurrency", type=int, default=10, help="per worker (10)")
    add("--max-other-cores", type=float, default=0.25, help="see bench/dispatch_scale.py")
    add("--quiet-wait", type=float, default=60.0, help="see bench/dispatch_scale.py (60)")
    add("--timeout", type=float, default=600, help="bound of one measured window, s")
    add(
        "--code",
        default="HEAD",
        metavar="REV",
        help="git revision the node and workers run (`git archive`); 'worktree': the checkout",
    )
    add(
        "--pg-stats",
        action="store_true",
        help="load pg_stat_statements (restart) and report the costliest statements per window",
    )
    add("--profile", default=None, metavar="DIR", help="py-spy the node: DIR/<run>-r<k>/")
    add("--out", default=str(ROOT / "bench" / "results" / "limits.json"))
    add("--log-level", default="WARNING", help="node and worker log level")
    add("--dir", default=None, help="parent of the temp dirs (default: system temp)")
    add("--keep", action="store_true", help="keep the temp dirs (logs, data)")
    args = ap.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) == ap.get_default(key):
                setattr(args, key, value)
    args.parts = [p for p in args.parts.split(",") if p]
    args.kinds = [k for k in args.kinds.split(",") if k]
    if bad := sorted(set(args.parts) - set(PARTS)) + sorted(set(args.kinds) - set(KINDS)):
        ap.error(f"unknown parts or kinds {bad}")
    if min(args.repeat, args.eff_repeat) < 1 or args.measure <= 0 or args.skip < 0:
        ap.error("--repeat and --eff-repeat >= 1, --measure > 0 and --skip >= 0")
    args.prefetch = None  # the SDK default: = concurrency
    args.small_backlog = 1000  # dispatch_scale's rate_first_small (reported, not used)
    return args


def main() -> None:
    args = parse_args()
    code, snap = snapshot_code(args)
    bench = LimitsBench(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    t0 = time.time()
    code["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    try:
        bench.start_services()
        with runner:
            runner.run(bench.run())
    except KeyboardInterrupt:
        say("interrupted")
    finally:
        bench.stop_all()
        if snap is not None and not args.keep:
            shutil.rmtree(snap, ignore_errors=True)
    code["elapsed_s"] = round(time.time() - t0)
    out = report(bench.out, args, code)
    print_summary(out)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
