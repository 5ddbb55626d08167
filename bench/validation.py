"""What the check of a job's args (and of an ack's result) costs per job, in process (timeit).

    .venv/bin/python bench/validation.py                      # ~50 s
    .venv/bin/python bench/validation.py --code 7e96c28 --out bench/results/validation-7e96c28.json

Since commit 7e96c28 (issue 14) the node stores args and results through `worcr_node.jobspec.
pack_value`: `msgpack.packb` (as before) and the size check, then `check_value`, an iterative walk
that refuses values with no JSON form and nesting deeper than `Limits.max_depth`. The SDK walks the
args once too before sending (`worcr.spec.check_json_form`). Before, the node only packed
(`msgpack.packb(args, use_bin_type=True)` and the size check), so `packb` alone is the old cost
and `pack_value - packb` (about `check_value`) is what the check adds per job.

Values (each timed with every function):
  typical   [1, "two", {"a": 3}]
  noop      [7] (the args of bench/noop_jobs.py's job, as throughput.py enqueues it)
  int       7 (the no-op job's ack result)
  ints_256k a list of small ints (0..127) that packs to exactly `Limits.max_args` (256 KiB),
            the largest args the node accepts: the worst case per byte
  nested    a list of 1,000 small maps {"id": i, "name": "item-i", "tags": ["a", "b"]}

Every (value, function) pair is timed --repeat times (timeit, GC off, each sample long enough for
~0.2 s), the functions' samples interleaved (this VM's speed drifts by tens of per cent within a
minute); the median and the minimum µs per call are reported, and the ratio pack_value / packb.
The module under test is a `git archive` copy of --code (default 'worktree': the checkout; see
bench/throughput.py's `snapshot_code`). The last stdout line is one JSON object, also written to
--out if given.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
import timeit
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.throughput import machine, snapshot_code  # noqa: E402


def values(max_args: int) -> dict[str, Any]:
    n = max_args - 5  # array32 header (5 bytes) + one byte per fixint
    return {
        "typical": [1, "two", {"a": 3}],
        "noop": [7],
        "int": 7,
        "ints_256k": [i % 128 for i in range(n)],
        "nested": [{"id": i, "name": f"item-{i}", "tags": ["a", "b"]} for i in range(1000)],
    }


def time_calls(fns: dict[str, Any], repeat: int) -> dict[str, dict[str, float]]:
    """µs per call of each function, the samples interleaved (f1 f2 f3 f1 f2 f3 ...) so that a
    change of the machine's state hits every function alike."""
    timers = {name: timeit.Timer(fn) for name, fn in fns.items()}
    numbers = {name: t.autorange()[0] for name, t in timers.items()}  # samples of >= 0.2 s
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, t in timers.items():
            samples[name].append(t.timeit(numbers[name]) / numbers[name] * 1e6)
    return {
        name: {"median_us": statistics.median(xs), "min_us": min(xs), "number": numbers[name]}
        for name, xs in samples.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--repeat", type=int, default=9, help="timeit samples per pair (9)")
    ap.add_argument("--code", default="worktree", metavar="REV", help="git revision ('worktree')")
    ap.add_argument("--dir", default=None, help="parent of the code copy (system temp)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args()
    code, snap = snapshot_code(a.code, a.dir)
    try:
        run(a, code)
    finally:
        if snap is not None:
            shutil.rmtree(snap, ignore_errors=True)


def run(a: argparse.Namespace, code: dict[str, Any]) -> None:
    import msgpack

    from worcr.spec import check_json_form
    from worcr.wire import Limits
    from worcr_node.jobspec import check_value, pack_value

    lim = Limits()
    vals = values(lim.max_args)
    assert len(msgpack.packb(vals["ints_256k"], use_bin_type=True)) == lim.max_args
    funcs = {
        "packb": lambda v: msgpack.packb(v, use_bin_type=True),
        "check_value": lambda v: check_value(v, "args", lim.max_depth),
        "pack_value": lambda v: pack_value(v, "args", lim.max_args, lim.max_depth),
        "sdk_check_json_form": lambda v: check_json_form(v, "args"),
    }
    res: dict[str, Any] = {}
    print(f"{'value':<10} {'function':<20} {'median µs':>11} {'min µs':>11}", file=sys.stderr)
    for vname, v in vals.items():
        row: dict[str, Any] = time_calls(
            {fname: (lambda f=f, v=v: f(v)) for fname, f in funcs.items()}, a.repeat
        )
        for fname in funcs:
            print(
                f"{vname:<10} {fname:<20} {row[fname]['median_us']:>11.3f} "
                f"{row[fname]['min_us']:>11.3f}",
                file=sys.stderr,
                flush=True,
            )
        base = row["packb"]["median_us"]
        row["pack_value_over_packb"] = row["pack_value"]["median_us"] / base
        row["added_us"] = row["pack_value"]["median_us"] - base
        row["packed_bytes"] = len(msgpack.packb(v, use_bin_type=True))
        print(
            f"{vname:<10} pack_value / packb = {row['pack_value_over_packb']:.2f}x, "
            f"+{row['added_us']:.3f} µs per job ({row['packed_bytes']:,} bytes packed)",
            file=sys.stderr,
        )
        res[vname] = row
    out = {
        "values": res,
        **code,
        "msgpack": ".".join(map(str, msgpack.version)),
        "repeat": a.repeat,
        "machine": machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    text = json.dumps(out)
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(text, flush=True)


if __name__ == "__main__":
    main()
