"""Worcr embedded functions: the cost of one call, of a weight function to dispatch, of on_enqueue.

    .venv/bin/python bench/functions.py            # full run: --rounds 4, ~10 min
    .venv/bin/python bench/functions.py --quick    # smoke run, < 3 min

Both parts use the code of --code (default HEAD): the node and the workers run a `git archive`
copy of it (bench/dispatch_scale.py's `snapshot_code`), and this process imports worcr_node from
the same copy, so edits to the checkout during the run cannot mix code versions.

1. calls (in this process, no node). Sample values: the lane view of a `heavy` job of tenant
   "tenant-0042" with tags premium, region:eu, weight 1, and the worker view of a class running
   heavy and light with tags gpu, pool:1, region:eu (worcr_node/functions/views.py); for
   on_enqueue, the job view of a new job with small args ({"user": 42, "plan": "premium",
   "items": [1, 2, 3]}; functions/enqueue.py `job_view`). Cases, µs per call:
   - `<lang>.weight.raw`: `compile_function(...).call(job, worker)` of a weight function that
     returns the constant 10: the sandbox alone (values in, call, value out, the caps);
   - `<lang>.weight.runner`: the same through `FunctionRunner.weight` (breaker, counters, result
     check: what the dispatcher pays); `<lang>.weight_kind.runner`: the function of part 2
     (10 for kind heavy, else 1);
   - `rules.static`: `rules.evaluate` with one static multiply rule (factor 10, kinds heavy), the
     dispatcher's per-verdict work without functions; `rules.function.<lang>`: `evaluate` with one
     function multiply rule through a new `LaneJudge` (views built, function called), which is
     what the dispatcher does for each (lane, worker class) verdict it has not cached;
   - `<lang>.on_enqueue.raw` / `.runner`: an on_enqueue function answering {expires_at =
     enqueued_at + 12 h} (the same shape in both languages); `<lang>.on_enqueue.apply`:
     `apply_on_enqueue` for one job (function lookup, job view, call, validate, change the job),
     in this process. Since the function process (code with `functions/host.py`): the job-time
     hooks are coroutines (run to completion on an event loop here, with the in-process host),
     `.weight.runner` is a remembered answer read as the dispatcher reads it
     (`FunctionRunner.known`), and `<lang>.on_enqueue.process_x100` is 100 on_enqueue calls
     at once through a real function process (what an enqueue batch of 100 pays, wall time;
     divide by 100 for one job).
   Each case is timed with timeit, --call-rounds rounds of about --round-s seconds each, the
   cases interleaved within a round (the order rotating), median and min reported. Compile time:
   `compile_function` + `close` of the weight function, --compiles times per language,
   interleaved, after one warm-up compile each (its time, imports included, is reported apart).
2. dispatch. Services (PostgreSQL with fsync on, Redis) start once; every run gets a fresh
   database and an empty Redis (bench/fairness.py's `fresh_state`), its own node (default
   settings: round_robin, lane window 500), the rule (and its function) created over HTTP
   (`PUT /api/v1/functions/{name}`, `POST /api/v1/rules`) before anything is enqueued, then
   --jobs jobs (`enqueue_many`, batches of 20,000): job i of tenant t<i mod T>, kind `heavy` if
   (i div T) is even else `light`, so every tenant has a heavy and a light lane (2 T lanes).
   Then bench/dispatch_scale.py's measurement (`settle`: VACUUM ANALYZE + CHECKPOINT; wait for
   a quiet machine; start the workers; rate over the first --window jobs started; node CPU
   ms/job, other processes' cores busy over the same window). Before the workers start, the
   node's own explain (`GET /api/v1/dispatch/explain`) must give a heavy job rule factor 10 and
   a light one 1: the rule is in force, with the same effect in every variant.
   --workers worker processes (`python -m worcr.worker bench.functions_jobs`, --concurrency
   each), worker k tagged pool:k (WORCR_TAGS): a rule with a function sees every worker tag, so
   the function variants split the workers into --workers classes (one pick structure and one
   cached verdict per lane each), where the static rule (no worker match) leaves one class.
   Variants (--variants):
   - `static`: {"action": "multiply", "factor": 10, "match": {"kinds": ["heavy"]}};
   - `lua`, `js`: {"action": "multiply", "function": ...} matching every job, the function
     answering 10 for kind heavy, else 1 (Lua, JavaScript);
   - `static_classes` (control, not in the default set): the static rule with worker_tags
     {"any": ["pool:*"]}: same weights, but the workers split into classes as for a function,
     which separates the cost of the class split from that of the calls.
   --rounds rounds of every variant, the order rotating (A B C, B C A, ...). Ratios are taken
   within a round (function / static), and their median is reported; the target is >= 0.7.
   The node does not report how many function calls it made; `function_calls_expected` is one
   per (ready lane, worker class) pair (the verdict cache), plus 2 for the explain check.
3. enqueue (the on_enqueue cost as a producer sees it, and as the node pays it). Per run: a
   fresh database and node; no function, or an on_enqueue function (Lua, JavaScript; the
   expiry function of part 1, no rule) installed over HTTP; --producers clients each enqueue
   batches of --enqueue-batch jobs (`enqueue_many`) until --enqueue-jobs are in, after a
   warm-up of two batches each. Reported: jobs/s, and the node's CPU ms per job for its own
   process (its event loop: where the calls ran before the function process) and with its
   children (the function process included). Each run checks the function changed every job
   (an expiry). --rounds rounds, order rotating; ratios (function / none) within a round.

Machine load: the load average at the start; at the start and the end, the benchmarks and tests
seen running (command lines) and the processes using >= 10 % of a core (`busy_at_start`,
`busy_at_end`); the cores other processes used during part 1 and during every measured dispatch
window (`other_cores_busy`; a window starts only when they use at most --max-other-cores,
waiting at most --quiet-wait s).
Progress goes to stderr; the last line of stdout is one JSON object, also written to --out
(default bench/results/functions-<UTC time>.json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import sys
import time
import timeit
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.dispatch_scale import ScaleBench, Scenario, fmt, snapshot_code  # noqa: E402
from bench.fairness import FairnessBench, other_activity  # noqa: E402
from bench.limits import LimitsBench  # noqa: E402
from bench.throughput import machine, say  # noqa: E402

TARGET = 0.7
CHUNK = 20_000
LANGS = ("lua", "javascript")
SHORT = {"lua": "lua", "javascript": "js"}

SOURCES: dict[tuple[str, str], str] = {
    ("lua", "weight"): "function weight(job, worker)\n  return 10\nend\n",
    ("javascript", "weight"): "function weight(job, worker) {\n  return 10;\n}\n",
    ("lua", "weight_kind"): (
        'function weight(job, worker)\n  if job.kind == "heavy" then return 10 end\n'
        "  return 1\nend\n"
    ),
    ("javascript", "weight_kind"): (
        'function weight(job, worker) {\n  return job.kind === "heavy" ? 10 : 1;\n}\n'
    ),
    ("lua", "on_enqueue"): (
        "function on_enqueue(job)\n  return { expires_at = job.enqueued_at + 12 * 3600 }\nend\n"
    ),
    ("javascript", "on_enqueue"): (
        "function on_enqueue(job) {\n  return { expires_at: job.enqueued_at + 12 * 3600 };\n}\n"
    ),
}
STATIC_RULE: dict[str, Any] = {
    "name": "heavy x10",
    "action": "multiply",
    "factor": 10,
    "match": {"kinds": ["heavy"]},
}
ARGS_SAMPLE = {"user": 42, "plan": "premium", "items": [1, 2, 3]}

QUICK = {
    "jobs": 12_000,
    "window": 10_000,
    "tenants": 100,
    "rounds": 1,
    "call_rounds": 3,
    "round_s": 0.1,
    "compiles": 5,
    "quiet_wait": 20.0,
    "enqueue_jobs": 4000,
}


def foreign_busy() -> float:
    """CPU seconds used machine-wide so far, minus this process's own."""
    t = psutil.cpu_times()
    busy = sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "steal", 0.0)
    return float(busy - time.process_time())


def busy_others(seconds: float = 1.0, floor: float = 10.0) -> list[str]:
    """Processes outside this run using at least `floor` % of a core over `seconds`."""
    mine = {os.getpid()}
    with contextlib.suppress(psutil.Error):
        mine |= {p.pid for p in psutil.Process().children(recursive=True)}
    procs = [p for p in psutil.process_iter(["pid", "cmdline", "name"]) if p.pid not in mine]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.cpu_percent(None)
    time.sleep(seconds)
    out = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            pct = p.cpu_percent(None)
            if pct >= floor:
                cmd = " ".join(p.info["cmdline"] or []) or p.info["name"] or "?"
                out.append(f"{pct:.0f}% pid {p.pid}: {cmd[:150]}")
    return sorted(out, reverse=True)


# -- part 1: calls ---------------------------------------------------------------------------------


def call_cases() -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """The timed callables, and a check of what each answers (run once before timing)."""
    import msgpack

    from worcr.wire import Limits
    from worcr_node.dispatch.rules import TagSet, evaluate, parse_rule
    from worcr_node.functions.enqueue import apply_on_enqueue, job_view
    from worcr_node.functions.judge import LaneJudge
    from worcr_node.functions.model import Function, Hook
    from worcr_node.functions.runner import FunctionRunner

    try:
        from worcr_node.functions.engines import compile_function
    except ImportError:  # in sandbox.py until 42c2408
        from worcr_node.functions.sandbox import compile_function  # type: ignore
    from worcr_node.functions.views import lane_view, worker_view
    from worcr_node.jobspec import NewJob, lane_of
    from worcr_node.state import JobState

    kind, tenant, tags, wkinds, wtags = (
        "heavy", "tenant-0042", ("premium", "region:eu"), ("heavy", "light"),
        ("gpu", "pool:1", "region:eu"),
    )  # fmt: skip
    lane = lane_of(kind, tenant, tags, 1.0)
    job, worker = lane_view(kind, tenant, tags, 1.0), worker_view(wkinds, wtags)
    jtags, wtagset = TagSet(tags), TagSet(wtags)
    now = time.time()

    def new_job() -> NewJob:
        return NewJob(uuid.uuid4(), kind, msgpack.packb(ARGS_SAMPLE), tags, tenant, 1.0,
                      JobState.QUEUED, None, None, 3, None, None, 0.0, lane, False)  # fmt: skip

    old_api = hasattr(FunctionRunner, "compile")  # --code before the function process
    loop = asyncio.new_event_loop()

    def done(value: Any) -> Any:  # the new runner's job-time hooks are coroutines
        return loop.run_until_complete(value) if asyncio.iscoroutine(value) else value

    runner = FunctionRunner()
    fns = [Function(f"{SHORT[lang]}_{name}", lang, Hook.WEIGHT, SOURCES[lang, name], 1)
           for lang in LANGS for name in ("weight", "weight_kind")]  # fmt: skip
    runner.set_functions(fns)
    if old_api:
        weight: Callable[..., Any] = runner.weight
    else:  # a remembered answer, read like the dispatcher reads it (asked once first)
        for fn in fns:
            done(runner.weight(fn.name, job, worker, lane))

        def weight(name: str, job: Any, worker: Any, lane: str) -> Any:
            return runner.known(name, Hook.WEIGHT, (job, worker), lane, worker)

    static = [parse_rule(STATIC_RULE)]
    cases: dict[str, Callable[[], Any]] = {}
    expect: dict[str, Any] = {}
    cases["rules.static"] = lambda: evaluate(static, kind, tenant, jtags, wtagset)
    expect["rules.static"] = 10.0
    for lang in LANGS:
        s = SHORT[lang]
        name = f"{s}_weight"
        code = compile_function(lang, SOURCES[lang, "weight"], "weight")
        cases[f"{s}.weight.raw"] = lambda code=code: code.call(job, worker)
        cases[f"{s}.weight.runner"] = lambda name=name: weight(name, job, worker, lane)
        cases[f"{s}.weight_kind.runner"] = lambda s=s: weight(f"{s}_weight_kind", job,
                                                              worker, lane)  # fmt: skip
        expect.update({f"{s}.weight.raw": 10, f"{s}.weight.runner": 10.0,
                       f"{s}.weight_kind.runner": 10.0})  # fmt: skip
        rule = [parse_rule({"name": "fn", "action": "multiply", "function": name})]

        def judged(rule: Any = rule) -> Any:
            judge = LaneJudge(runner, lane, kind, tenant, jtags.tags, 1.0, wkinds, wtagset.tags)
            return evaluate(rule, kind, tenant, jtags, wtagset, judge)

        cases[f"rules.function.{s}"] = judged
        expect[f"rules.function.{s}"] = 10.0
        # on_enqueue: a runner of its own, so that `apply` finds this language's function only
        enq = FunctionRunner()
        fn = Function(f"{s}_expiry", lang, Hook.ON_ENQUEUE, SOURCES[lang, "on_enqueue"], 1)
        enq.set_functions([fn])
        view = job_view(new_job(), ARGS_SAMPLE, now)
        ecode = compile_function(lang, SOURCES[lang, "on_enqueue"], "on_enqueue")
        nj = new_job()
        cases[f"{s}.on_enqueue.raw"] = lambda ecode=ecode, view=view: ecode.call(view)
        cases[f"{s}.on_enqueue.runner"] = lambda enq=enq, fn=fn, view=view: done(enq.on_enqueue(
            fn, view, "00000000-0000-0000-0000-000000000000"
        ))  # fmt: skip
        cases[f"{s}.on_enqueue.apply"] = lambda enq=enq, nj=nj: done(apply_on_enqueue(
            enq, nj, ARGS_SAMPLE, now, Limits()
        ))  # fmt: skip
        expiry = now + 12 * 3600
        expect.update({f"{s}.on_enqueue.raw": {"expires_at": expiry},
                       f"{s}.on_enqueue.runner": {"expires_at": expiry},
                       f"{s}.on_enqueue.apply": expiry})  # fmt: skip
        if not old_api:  # what a node pays: 100 calls through its function process, at once
            from worcr_node.functions.host import ProcessHost

            try:
                from worcr_node.functions.sandbox import Caps
            except ImportError:  # named Limits until 9ee0c41
                from worcr_node.functions.sandbox import Limits as Caps  # type: ignore

            async def make(fn: Function = fn) -> Any:
                r = FunctionRunner(Caps(), None, ProcessHost(Caps()))
                r.set_functions([fn])
                return r

            proc = loop.run_until_complete(make())

            async def hundred(proc: Any = proc, fn: Function = fn, view: Any = view) -> Any:
                outs = await asyncio.gather(*(proc.on_enqueue(fn, view, "0") for _ in range(100)))
                return outs[-1]

            cases[f"{s}.on_enqueue.process_x100"] = lambda h=hundred: done(h())
            expect[f"{s}.on_enqueue.process_x100"] = {"expires_at": expiry}
    return cases, expect


def answer_of(name: str, value: Any) -> Any:
    """What a case answered, comparable with `call_cases`' expectations."""
    if name.startswith("rules."):
        return value.factor
    if name.endswith(".apply"):
        return value.expires_at
    if hasattr(value, "failure"):  # an Outcome
        if value.failure is not None:
            raise RuntimeError(f"{name}: {value.failure}")
        return value.value
    return value


def part_calls(a: argparse.Namespace) -> dict[str, Any]:
    say("part 1: cost per call, in process")
    busy0, t0 = foreign_busy(), time.time()
    compile_ms = compile_times(a)  # first: its first compile per language imports the runtime
    cases, expect = call_cases()
    checks = {}
    for name, fn in cases.items():
        got = answer_of(name, fn())
        checks[name] = got
        if got != expect[name]:
            raise RuntimeError(f"{name}: answered {got!r}, expected {expect[name]!r}")
    numbers: dict[str, int] = {}
    for name, fn in cases.items():  # calls per round: about --round-s seconds
        n, dt = timeit.Timer(fn).autorange()
        numbers[name] = max(1, int(n * a.round_s / dt))
    per: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(a.call_rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            dt = timeit.timeit(cases[name], number=numbers[name])
            per[name].append(1e6 * dt / numbers[name])
    calls = {
        name: {"us_median": round(statistics.median(xs), 3), "us_min": round(min(xs), 3),
               "rounds_us": [round(x, 3) for x in xs], "calls_per_round": numbers[name]}
        for name, xs in per.items()
    }  # fmt: skip
    wall = time.time() - t0
    out = {
        "calls": calls,
        "compile": compile_ms,
        "other_cores_busy": round((foreign_busy() - busy0) / wall, 3),
        "seconds": round(wall, 1),
    }
    for name, c in calls.items():
        say(f"  {name:28s} {c['us_median']:9.2f} µs (min {c['us_min']:.2f})")
    for lang, c in compile_ms.items():
        say(f"  compile {lang:10s} {c['ms_median']:.2f} ms (first, with imports: "
            f"{c['first_ms']:.1f} ms)")  # fmt: skip
    say(f"  other processes used {out['other_cores_busy']:.2f} cores during part 1")
    return out


def compile_times(a: argparse.Namespace) -> dict[str, Any]:
    try:
        from worcr_node.functions.engines import compile_function
    except ImportError:  # in sandbox.py until 42c2408
        from worcr_node.functions.sandbox import compile_function  # type: ignore

    def once(lang: str) -> float:
        t = time.perf_counter()
        code = compile_function(lang, SOURCES[lang, "weight_kind"], "weight")
        code.close()
        return 1000 * (time.perf_counter() - t)

    first = {lang: once(lang) for lang in LANGS}  # imports the runtime (lupa, quickjs)
    times: dict[str, list[float]] = {lang: [] for lang in LANGS}
    for _ in range(a.compiles):
        for lang in LANGS:
            times[lang].append(once(lang))
    return {
        SHORT[lang]: {"ms_median": round(statistics.median(xs), 3), "ms_min": round(min(xs), 3),
                      "first_ms": round(first[lang], 3), "n": len(xs)}
        for lang, xs in times.items()
    }  # fmt: skip


# -- part 2: dispatch ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    rule: dict[str, Any] | None  # None: the function alone (on_enqueue)
    function: dict[str, Any] | None = None  # PUT /api/v1/functions/{name} body, with "name"
    classes_split: bool = False  # the rule sees worker tags: one class per worker tag set
    info: dict[str, Any] = field(default_factory=dict)


def variants() -> dict[str, Variant]:
    out = {"static": Variant("static", STATIC_RULE)}
    for lang in LANGS:
        s = SHORT[lang]
        fn = {"name": f"heavy_{s}", "language": lang, "hook": "weight",
              "source": SOURCES[lang, "weight_kind"]}  # fmt: skip
        rule = {"name": f"heavy x10 ({s})", "action": "multiply", "function": fn["name"]}
        out[s] = Variant(s, rule, fn, classes_split=True)
    split = {**STATIC_RULE, "match": {"kinds": ["heavy"], "worker_tags": {"any": ["pool:*"]}}}
    out["static_classes"] = Variant("static_classes", split, classes_split=True)
    return out


def worker_tags(k: int) -> list[str]:
    return [f"pool:{k}"]


class FunctionsBench(ScaleBench):
    """bench/dispatch_scale.py's measurement, bench/limits.py's run handling (a fresh database,
    an empty Redis and a node per run on services started once)."""

    job_module = "bench.functions_jobs"
    fresh_db = FairnessBench.fresh_state
    drop_db = FairnessBench.drop_db
    stop_node = FairnessBench.stop_node
    begin = LimitsBench.begin
    teardown = LimitsBench.teardown

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args, Scenario("setup", 0, 0, 0), 0)
        self.root = self.tmp
        self.http = ""
        self.runs: dict[str, list[dict[str, Any]]] = {}

    def stop_all(self) -> None:
        self.tmp = self.root
        super().stop_all()

    def start_workers(self) -> None:
        """Bench.start_workers, one process at a time, worker k with tags pool:k."""
        a, base, n = self.args, self.tmp, self.args.workers
        try:
            a.workers = 1
            for k in range(n):
                os.environ["WORCR_TAGS"] = ",".join(worker_tags(k))
                self.tmp = base / f"w{k}"  # its log: w<k>/worker0.log
                self.tmp.mkdir(exist_ok=True)
                super().start_workers()
        finally:
            a.workers, self.tmp = n, base
            os.environ.pop("WORCR_TAGS", None)

    async def enqueue(self, client: Any, lo: int, hi: int) -> None:
        t, t0 = self.sc.tenants, time.perf_counter()
        for a in range(lo, hi, CHUNK):
            b = min(hi, a + CHUNK)
            await client.enqueue_many([
                {"kind": "heavy" if (i // t) % 2 == 0 else "light", "tenant": f"t{i % t}",
                 "args": [i]} for i in range(a, b)
            ])  # fmt: skip
        say(f"  enqueued {hi - lo:,} jobs ({(hi - lo) / (time.perf_counter() - t0):,.0f}/s)")

    async def fresh_node(self) -> None:
        """A fresh database and Redis, and a node on them; learns its HTTP address."""
        await self.fresh_db("round_robin")
        self.start_node()
        log = (self.tmp / "node.log").read_text(errors="replace")
        found = re.search(r"HTTP API (http://\S+?),", log)
        if found is None:
            raise RuntimeError("no HTTP address in node.log")
        self.http = found.group(1)

    async def install(self, v: Variant) -> None:
        """The variant's function and rule, over the node's HTTP API."""
        import aiohttp

        async with aiohttp.ClientSession(self.http) as http:
            if v.function is not None:
                body = {k: x for k, x in v.function.items() if k != "name"}
                async with http.put(f"/api/v1/functions/{v.function['name']}", json=body) as resp:
                    fn = await resp.json()
                    if resp.status not in (200, 201):
                        raise RuntimeError(f"PUT function: {resp.status} {fn}")
                self.res["function"] = {k: fn.get(k) for k in ("name", "version", "language")}
            if v.rule is None:
                return
            async with http.post("/api/v1/rules", json=v.rule) as resp:
                rule = await resp.json()
                if resp.status != 201:
                    raise RuntimeError(f"POST rule: {resp.status} {rule}")
            self.res["rule"] = {k: x for k, x in rule.items() if k != "id"}

    async def check_policy(self, db: Any) -> None:
        """The node's explain: a heavy job gets factor 10, a light one 1 (waits up to 10 s for
        the node to load the policy)."""
        import aiohttp

        ids = {k: await db.fetchval("SELECT id FROM worcr_jobs WHERE kind = $1 LIMIT 1", k)
               for k in ("heavy", "light")}  # fmt: skip
        want = {"heavy": 10.0, "light": 1.0}
        got: dict[str, Any] = {}
        deadline = time.time() + 10
        async with aiohttp.ClientSession(self.http) as http:
            while True:
                for k, jid in ids.items():
                    q = {"job": str(jid), "tags": ",".join(worker_tags(0))}
                    async with http.get("/api/v1/dispatch/explain", params=q) as resp:
                        got[k] = (await resp.json()).get("rule_factor")
                if got == want or time.time() > deadline:
                    break
                await asyncio.sleep(0.25)
        self.res["explain_factor"] = got
        if got != want:
            raise RuntimeError(f"the rule is not in force: explain says {got}, expected {want}")

    async def dispatch_run(self, v: Variant, rep: int) -> dict[str, Any]:
        import asyncpg
        import redis

        from worcr import Client

        a = self.args
        sc = Scenario(v.name, a.jobs, a.tenants, a.window)
        self.begin(v.name, rep, sc)
        say(f"== {v.name} (round {rep + 1}/{a.rounds}): {a.jobs:,} jobs over {a.tenants} "
            f"tenants x 2 kinds; rule {json.dumps(v.rule)}")  # fmt: skip
        self.res.update(jobs=a.jobs, tenants=a.tenants, window=a.window, workers=a.workers)
        try:
            await self.fresh_node()
            await self.install(v)
            r = redis.Redis.from_url(self.redis.url)
            db = await asyncpg.connect(self.db_url)
            client = await Client.connect(self.node_addr)
            try:
                await self.enqueue(client, 0, sc.jobs)
                await self.settle(db)
                await self.check_policy(db)
                lanes = self.res["ready_lanes_after_enqueue"] = r.scard(self.ready_key)
                classes = a.workers if v.classes_split else 1
                self.res["worker_classes"] = classes
                if v.function is not None:
                    self.res["function_calls_expected"] = lanes * classes + 2
                await self.process(client, r)
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

    async def enqueue_run(self, lang: str | None, rep: int) -> dict[str, Any]:
        """Part 3: --enqueue-jobs jobs enqueued in batches of --enqueue-batch by --producers
        concurrent producers, through the on_enqueue function of `lang` (None: no function)."""
        import asyncpg

        from bench.throughput import tree_cpu
        from worcr import Client

        a = self.args
        name = f"enqueue_{SHORT[lang] if lang else 'none'}"
        self.begin(name, rep)
        say(f"== {name} (round {rep + 1}/{a.rounds}): {a.enqueue_jobs:,} jobs, batches of "
            f"{a.enqueue_batch}, {a.producers} producers")  # fmt: skip
        self.res.update(jobs=a.enqueue_jobs, batch=a.enqueue_batch, producers=a.producers)
        try:
            await self.fresh_node()
            if lang is not None:
                fn = {"name": f"expiry_{SHORT[lang]}", "language": lang, "hook": "on_enqueue",
                      "source": SOURCES[lang, "on_enqueue"]}  # fmt: skip
                await self.install(Variant(name, None, fn))
            clients = [await Client.connect(self.node_addr) for _ in range(a.producers)]
            db = await asyncpg.connect(self.db_url)
            try:
                n, b = a.enqueue_jobs, a.enqueue_batch

                async def produce(client: Any, k: int, lo: int, hi: int) -> None:
                    for i in range(lo + k * b, hi, a.producers * b):
                        await client.enqueue_many([{"kind": "light", "tenant": f"t{j % 50}",
                                                    "args": ARGS_SAMPLE}
                                                   for j in range(i, min(hi, i + b))])  # fmt: skip

                async def run(lo: int, hi: int) -> None:
                    await asyncio.gather(*(produce(c, k, lo, hi) for k, c in enumerate(clients)))

                await run(0, 2 * b * a.producers)  # warm-up: connections, compile, caches
                await self.wait_quiet()
                pid = self.node.pid if self.node else 0
                node = psutil.Process(pid)
                own0, tree0 = sum(node.cpu_times()[:2]), tree_cpu([pid])
                t0 = time.perf_counter()
                await run(2 * b * a.producers, 2 * b * a.producers + n)
                wall = time.perf_counter() - t0
                own, tree = sum(node.cpu_times()[:2]) - own0, tree_cpu([pid]) - tree0
                self.res.update(
                    jobs_per_s=round(n / wall, 1),
                    ms_per_job=round(1000 * wall / n, 4),
                    node_loop_cpu_ms_per_job=round(1000 * own / n, 4),
                    node_tree_cpu_ms_per_job=round(1000 * tree / n, 4),
                )
                expiring = await db.fetchval(
                    "SELECT count(*) FROM worcr_jobs WHERE expires_at IS NOT NULL"
                )
                self.res["jobs_changed_by_the_function"] = expiring
                if (expiring != 0) != (lang is not None):
                    raise RuntimeError(f"{expiring} jobs have an expiry: the function "
                                       f"{'did not run' if lang else 'ran'}")  # fmt: skip
                say(f"  {self.res['jobs_per_s']:,.0f} jobs/s; node CPU ms/job: event loop "
                    f"{self.res['node_loop_cpu_ms_per_job']}, with children "
                    f"{self.res['node_tree_cpu_ms_per_job']}")  # fmt: skip
            finally:
                for c in clients:
                    await c.close()
                await db.close()
        except Exception as exc:  # one failed run must not lose the others
            say(f"  {name} failed: {exc!r}")
            self.res["status"] = f"error: {exc!r}"
        finally:
            await self.teardown()
        return {k: round(x, 4) if isinstance(x, float) else x for k, x in self.res.items()}

    async def wait_quiet(self) -> None:
        """Until other processes use at most --max-other-cores (at most --quiet-wait s)."""
        deadline = time.time() + self.args.quiet_wait
        while time.time() < deadline:
            b0, t0 = foreign_busy(), time.time()
            await asyncio.sleep(1.0)
            if (foreign_busy() - b0) / (time.time() - t0) <= self.args.max_other_cores:
                return

    async def run_enqueue(self) -> dict[str, list[dict[str, Any]]]:
        """--rounds rounds of enqueue without a function, through Lua, through JavaScript."""
        order: list[str | None] = [None, *LANGS]
        runs: dict[str, list[dict[str, Any]]] = {}
        for rep in range(self.args.rounds):
            k = rep % len(order)
            for lang in order[k:] + order[:k]:
                r = await self.enqueue_run(lang, rep)
                runs.setdefault(r["name"], []).append(r)
        return runs

    async def run(self) -> dict[str, list[dict[str, Any]]]:
        """--rounds rounds of every variant, the order rotating from round to round."""
        table = variants()
        chosen = [table[name] for name in self.args.variants]
        self.runs = {v.name: [] for v in chosen}
        self.sampler.start()
        for rep in range(self.args.rounds):
            k = rep % len(chosen)
            for v in chosen[k:] + chosen[:k]:
                self.runs[v.name].append(await self.dispatch_run(v, rep))
        return self.runs


# -- report ----------------------------------------------------------------------------------------


def ok(r: dict[str, Any]) -> bool:
    return r.get("status") == "ok"


def med(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return round(statistics.median(vals), 4) if vals else None


def dispatch_report(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    keys = ("rate", "node_cpu_ms_per_job", "other_cores_busy", "jobs_per_claim",
            "redis_cmd_us_per_job", "node_rss_mb", "ready_lanes_after_enqueue")  # fmt: skip
    summary: dict[str, Any] = {}
    for name, rs in runs.items():
        good = [r for r in rs if ok(r)]
        summary[name] = {k: med([r.get(k) for r in good]) for k in keys}
        summary[name]["rates"] = [r.get("rate") if ok(r) else None for r in rs]
        summary[name]["node_cpu_ms_per_job_runs"] = [
            r.get("node_cpu_ms_per_job") if ok(r) else None for r in rs
        ]
        summary[name]["other_cores_busy_runs"] = [r.get("other_cores_busy") for r in rs]
        calls = [r.get("function_calls_expected") for r in good]
        if any(c is not None for c in calls):
            summary[name]["function_calls_expected"] = calls
    ratios: dict[str, Any] = {}
    base = runs.get("static", [])
    for name, rs in runs.items():
        if name == "static":
            continue
        rate, cpu = [], []
        for x, y in zip(rs, base, strict=False):  # the same round
            both = ok(x) and ok(y)
            rate.append(round(x["rate"] / y["rate"], 3) if both and y.get("rate") else None)
            cpu.append(round(x["node_cpu_ms_per_job"] / y["node_cpu_ms_per_job"], 3)
                       if both and y.get("node_cpu_ms_per_job") else None)  # fmt: skip
        of_medians = None
        if summary[name]["rate"] and summary.get("static", {}).get("rate"):
            of_medians = round(summary[name]["rate"] / summary["static"]["rate"], 3)
        ratios[f"{name} / static"] = {
            "rate_ratio_median": med(rate),
            "rate_ratio_per_round": rate,
            "rate_ratio_of_medians": of_medians,
            "node_cpu_ratio_median": med(cpu),
            "node_cpu_ratio_per_round": cpu,
        }
    measured = [ratios[k]["rate_ratio_median"] for k in ("lua / static", "js / static")
                if k in ratios]  # fmt: skip
    return {
        "summary": summary,
        "ratios": ratios,
        "target": f"function / static jobs/s >= {TARGET}",
        "met": bool(measured) and all(x is not None and x >= TARGET for x in measured),
    }


def enqueue_report(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    keys = ("jobs_per_s", "ms_per_job", "node_loop_cpu_ms_per_job", "node_tree_cpu_ms_per_job")
    summary = {name: {k: med([r.get(k) for r in rs if ok(r)]) for k in keys}
               for name, rs in runs.items()}  # fmt: skip
    for name, rs in runs.items():
        summary[name]["jobs_per_s_runs"] = [r.get("jobs_per_s") if ok(r) else None for r in rs]
    base = runs.get("enqueue_none", [])
    ratios = {}
    for name, rs in runs.items():
        if name == "enqueue_none":
            continue
        rate = [round(x["jobs_per_s"] / y["jobs_per_s"], 3) if ok(x) and ok(y) else None
                for x, y in zip(rs, base, strict=False)]  # fmt: skip
        extra = [round(x["node_tree_cpu_ms_per_job"] - y["node_tree_cpu_ms_per_job"], 4)
                 if ok(x) and ok(y) else None for x, y in zip(rs, base, strict=False)]  # fmt: skip
        ratios[f"{name} / enqueue_none"] = {
            "rate_ratio_median": med(rate),
            "rate_ratio_per_round": rate,
            "function_cpu_ms_per_job_median": med(extra),
        }
    return {"summary": summary, "ratios": ratios}


def print_summary(out: dict[str, Any]) -> None:
    calls = out.get("calls")
    if calls:
        say("per call (µs, median):")
        for name, c in calls["calls"].items():
            say(f"  {name:28s} {c['us_median']:9.2f}")
        for lang, c in calls["compile"].items():
            say(f"  compile {lang:20s} {c['ms_median']:9.3f} ms")
    e = out.get("enqueue")
    if e:
        say("enqueue (median jobs/s; node CPU ms/job: event loop, with the function process):")
        for name, x in e["summary"].items():
            say(f"  {name:15s} {fmt(x['jobs_per_s'])} jobs/s {x['node_loop_cpu_ms_per_job']} "
                f"{x['node_tree_cpu_ms_per_job']} runs {x['jobs_per_s_runs']}")  # fmt: skip
        for name, x in e["ratios"].items():
            say(f"  {name:30s} rate ratio median {x['rate_ratio_median']} per round "
                f"{x['rate_ratio_per_round']}; function CPU ms/job "
                f"{x['function_cpu_ms_per_job_median']}")  # fmt: skip
    d = out.get("dispatch")
    if d:
        say("dispatch (median jobs/s, node CPU ms/job; runs in round order):")
        for name, s in d["summary"].items():
            say(f"  {name:15s} {fmt(s['rate'])} jobs/s {fmt(s['node_cpu_ms_per_job'], 3)} ms/job "
                f"runs {s['rates']}")  # fmt: skip
        for name, x in d["ratios"].items():
            say(
                f"  {name:22s} rate ratio median {x['rate_ratio_median']} per round "
                f"{x['rate_ratio_per_round']}; node CPU ratio {x['node_cpu_ratio_median']}"
            )
        say(f"  target {d['target']}: {'met' if d['met'] else 'NOT met'}")


# -- main ------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = ap.add_argument
    add("--quick", action="store_true", help="smoke run: " + json.dumps(QUICK))
    add("--parts", default="calls,dispatch,enqueue",
        help="comma-separated subset of calls,dispatch,enqueue")  # fmt: skip
    add("--enqueue-jobs", type=int, default=20_000, help="jobs per enqueue run (20000)")
    add("--enqueue-batch", type=int, default=100, help="jobs per enqueue_many (100)")
    add("--producers", type=int, default=4, help="concurrent producers in the enqueue part (4)")
    add("--variants", default="static,lua,js", help="dispatch variants, in round order "
        "(static,lua,js; also static_classes)")  # fmt: skip
    add("--rounds", type=int, default=4, help="rounds of every dispatch variant (4)")
    add("--jobs", type=int, default=36_000, help="jobs queued per dispatch run (36000)")
    add("--window", type=int, default=30_000, help="the rate is over the first N started (30000)")
    add("--tenants", type=int, default=200, help="tenants (x 2 kinds = ready lanes) (200)")
    add("--workers", type=int, default=3, help="worker processes, worker k tagged pool:k (3)")
    add("--concurrency", type=int, default=10, help="per worker (10)")
    add("--call-rounds", type=int, default=9, help="timeit rounds per call case (9)")
    add("--round-s", type=float, default=0.2, help="seconds per timeit round (0.2)")
    add("--compiles", type=int, default=30, help="compiles per language (30)")
    add("--max-other-cores", type=float, default=0.25, help="see bench/dispatch_scale.py")
    add("--quiet-wait", type=float, default=30.0, help="see bench/dispatch_scale.py (30)")
    add("--timeout", type=float, default=600, help="bound of one measured window, s")
    add("--code", default="HEAD", metavar="REV",
        help="git revision the node, the workers and part 1 run (`git archive`); 'worktree': "
        "the checkout")  # fmt: skip
    add("--profile", default=None, metavar="DIR", help="py-spy the node: DIR/<variant>-r<k>/")
    add("--out", default=None, help="JSON output (bench/results/functions-<UTC time>.json)")
    add("--log-level", default="WARNING", help="node and worker log level")
    add("--dir", default=None, help="parent of the temp dirs (default: system temp)")
    add("--keep", action="store_true", help="keep the temp dirs (logs, data)")
    args = ap.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) == ap.get_default(key):
                setattr(args, key, value)
    args.parts = [p for p in args.parts.split(",") if p]
    args.variants = [v for v in args.variants.split(",") if v]
    if bad := sorted(set(args.parts) - {"calls", "dispatch", "enqueue"}) + sorted(
        set(args.variants) - set(variants())
    ):
        ap.error(f"unknown parts or variants {bad}")
    if "dispatch" in args.parts and "static" not in args.variants:
        ap.error("the dispatch part needs the static variant (the ratios' baseline)")
    if not 2 <= args.window <= args.jobs or min(args.rounds, args.call_rounds) < 1:
        ap.error("need 2 <= --window <= --jobs, --rounds >= 1 and --call-rounds >= 1")
    args.prefetch = None  # the SDK default: = concurrency
    args.small_backlog = 1000  # dispatch_scale's rate_first_small (reported, not used)
    if args.out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        quick = "-quick" if args.quick else ""
        args.out = str(ROOT / "bench" / "results" / f"functions{quick}-{stamp}.json")
    return args


def main() -> None:
    args = parse_args()
    code, snap = snapshot_code(args)  # before anything imports worcr_node
    t0 = time.time()
    out: dict[str, Any] = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), **code}
    out["started_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    out["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    out["others_running_at_start"] = sorted(other_activity())
    out["busy_at_start"] = busy_others()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    bench: FunctionsBench | None = None
    enqueue_runs: dict[str, list[dict[str, Any]]] = {}
    try:
        if "calls" in args.parts:
            out["calls"] = part_calls(args)
            import worcr_node

            out["calls"]["worcr_node_from"] = str(Path(worcr_node.__file__).parent.parent)
        if "dispatch" in args.parts or "enqueue" in args.parts:
            try:
                import uvloop

                runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
            except ImportError:
                runner = asyncio.Runner()
            bench = FunctionsBench(args)
            bench.start_services()
            with runner:
                if "enqueue" in args.parts:
                    enqueue_runs = runner.run(bench.run_enqueue())
                if "dispatch" in args.parts:
                    runner.run(bench.run())
    except KeyboardInterrupt:
        say("interrupted")
    finally:
        if bench is not None:
            bench.stop_all()
        if snap is not None and not args.keep:
            shutil.rmtree(snap, ignore_errors=True)
    if enqueue_runs:
        out["enqueue"] = enqueue_report(enqueue_runs)
        keys = ("enqueue_jobs", "enqueue_batch", "producers", "rounds")
        out["enqueue"]["setup"] = {k: getattr(args, k) for k in keys}
        out["enqueue"]["runs"] = enqueue_runs
    if bench is not None and bench.runs:
        out["dispatch"] = dispatch_report(bench.runs)
        keys = ("jobs", "window", "tenants", "workers", "concurrency", "rounds", "variants")
        out["dispatch"]["setup"] = {k: getattr(args, k) for k in keys}
        out["dispatch"]["runs"] = bench.runs
    out["others_running_at_end"] = sorted(other_activity())
    out["busy_at_end"] = busy_others()
    out["elapsed_s"] = round(time.time() - t0)
    out["machine"] = machine()
    print_summary(out)
    with contextlib.suppress(OSError):
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
        say(f"wrote {args.out}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
