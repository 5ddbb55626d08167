"""How long a dispatch policy change takes to reach every node.

    .venv/bin/python bench/policy_propagation.py            # --nodes 3 --changes 50

Starts its own PostgreSQL and Redis (free loopback ports, temp dir) and N nodes in this process,
then makes `--changes` rule changes through node 1's HTTP API (create, replace, delete in turn),
one at a time, and measures for each the time from the API's answer to the moment every node's
dispatcher runs the new policy version. Reports p50, p99 and max, with
the Redis nudge on (the default) and with it off (nodes then learn only by polling PostgreSQL,
every 0.25 s): the second figure is the bound when Redis pub/sub is lost. Progress on stderr; the
last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worcr_node.config import Config, HostPort  # noqa: E402
from worcr_node.embedded import PostgresServer, RedisServer  # noqa: E402
from worcr_node.node import Node  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def measure(nodes: list[Node], changes: int, name: str) -> list[float]:
    out = []
    changed = asyncio.Event()
    for n in nodes:
        apply = n.policy.on_change

        def on_change(policy: Any, apply: Any = apply) -> None:
            apply(policy)
            changed.set()

        n.policy.on_change = on_change
    rule: dict[str, Any] = {"name": name, "action": "multiply", "factor": 2}
    rule_id = None
    async with aiohttp.ClientSession(nodes[0].http_address) as http:
        for i in range(changes):
            if rule_id is None:
                req = http.post("/api/v1/rules", json=rule)
            elif i % 3 == 1:
                req = http.put(f"/api/v1/rules/{rule_id}", json={**rule, "factor": 2 + i})
            else:
                req = http.delete(f"/api/v1/rules/{rule_id}")
            async with req as resp:
                assert resp.status in (200, 201, 204), await resp.text()
                if resp.status == 201:
                    rule_id = (await resp.json())["id"]
                elif resp.status == 204:
                    rule_id = None
            t0 = time.perf_counter()
            version = await nodes[0].policy_store.version()
            while any(n.dispatcher.policy.version < version for n in nodes):
                changed.clear()
                await changed.wait()
            out.append((time.perf_counter() - t0) * 1000)
    return out


def summary(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {"p50_ms": round(statistics.median(ms), 1),
            "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1),
            "max_ms": round(ms[-1], 1)}  # fmt: skip


async def run(args: argparse.Namespace, pg: PostgresServer, redis: RedisServer) -> dict[str, Any]:
    results: dict[str, Any] = {"nodes": args.nodes, "changes": args.changes}
    for nudge in (True, False):
        prefix = f"prop{int(nudge)}"
        nodes = []
        for i in range(args.nodes):
            config = Config(database_url=pg.dsn, redis_url=redis.url,
                            http=HostPort("127.0.0.1", 0), listen=HostPort("127.0.0.1", 0),
                            node_id=f"n{i + 1}", redis_prefix=prefix)  # fmt: skip
            node = Node(config)
            await node.start()
            nodes.append(node)
        if not nudge:  # nodes learn only by polling PostgreSQL
            for n in nodes:
                n.policy._nudge = _NeverSet()
        try:
            ms = await measure(nodes, args.changes, prefix)
        finally:
            for n in nodes:
                await n.stop()
        key = "with_redis_nudge" if nudge else "polling_only"
        results[key] = summary(ms)
        log(f"{key}: {results[key]}")
    return results


class _NeverSet(asyncio.Event):
    def set(self) -> None:
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--changes", type=int, default=50)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="worcr-prop-") as tmp:
        pg = PostgresServer(Path(tmp) / "pg")
        redis = RedisServer(Path(tmp) / "redis")
        pg.start()
        redis.start()
        try:
            print(json.dumps(asyncio.run(run(args, pg, redis))))
        finally:
            redis.stop()
            pg.stop()


if __name__ == "__main__":
    main()
