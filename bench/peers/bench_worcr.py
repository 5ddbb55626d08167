"""Worcr in the peers harness (../shared/bench-peers): 1 node, 2 worker processes, all durable.

Copy this file next to the harness's common.py (see bench/README.md), then
    ./run_all.sh --only worcr          # or add "worcr": 20000 to SYSTEMS in run_all.py

Backend: the harness's own brokers. The node stores jobs in a database `worcr_bench` that this
adapter (re)creates in the harness's PostgreSQL (pgserver, stock config: fsync on), and indexes
them in the harness's Redis (`FLUSHALL` on reset, like the Redis peers). The node is its own
process (`python -m worcr_node node`, WORCR_* variables, free loopback ports), started in
`reset()` and stopped by PID in `close()`; its CPU, PostgreSQL's and Redis's all count as
"broker" CPU. Enqueue: `Client.enqueue_many` (pipelined batches of 1,000; each batch is one
group-committed INSERT). Workers: 2 x `python -m worcr.worker bench_worcr --concurrency 10`
(the SDK default concurrency, prefetch = concurrency).

Worcr's own interpreter (the node and the workers) is $WORCR_PYTHON, default
<repo>/.venv/bin/python; the harness's driver imports the SDK (`worcr/`, which needs only msgpack)
from $WORCR_ROOT (default: the repository this file came from, else /work/main), so the peers venv
needs `pip install msgpack`.
"""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from common import Adapter, job_body, services


def _find_root():
    env = os.environ.get("WORCR_ROOT")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:  # bench/peers/bench_worcr.py inside the repository
        if (parent / "worcr_node").is_dir() and (parent / "worcr").is_dir():
            return parent
    return Path("/work/main")


ROOT = _find_root()
WORCR_PYTHON = os.environ.get("WORCR_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
HERE = Path(__file__).resolve().parent
DB_NAME = "worcr_bench"

try:
    import worcr
except ImportError:  # the peers venv: the SDK straight from the source tree
    sys.path.insert(0, str(ROOT))
    import worcr


@worcr.job("noop")
async def noop(ctx, i):
    return job_body(i)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _db_uri(uri, name):
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path="/" + name))


def _worcr_version():
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if line.startswith("version"):
            return line.split("=", 1)[1].strip().strip('"')
    return "?"


class Worcr(Adapter):
    name, package, backend = "worcr", "worcr", "PostgreSQL + Redis"
    bulk = "client.enqueue_many"
    notes = (
        "1 node + 2 worker procs x concurrency 10 (SDK default); durable: enqueue, claim and "
        "ack committed to PostgreSQL (fsync on); broker CPU = node + PostgreSQL + Redis"
    )
    version = _worcr_version()

    def __init__(self):
        info = services()
        self.redis_url, self.pg_uri = info["redis_url"], info["pg_uri"]
        self.redis_pid, self.pg_pid = info.get("redis_pid"), info.get("pg_pid")
        if info.get("pg_version") and info.get("redis_version"):
            self.backend = f"PostgreSQL {info['pg_version']} + Redis {info['redis_version']}"
        self.node = None
        self.node_addr = None
        self.client = None
        self.loop = asyncio.new_event_loop()

    def broker_pids(self):
        return [p for p in (self.node.pid if self.node else None, self.redis_pid, self.pg_pid) if p]

    def _stop_node(self):
        if self.client is not None:
            self.loop.run_until_complete(self.client.close())
            self.client = None
        if self.node is not None and self.node.poll() is None:
            self.node.send_signal(signal.SIGTERM)
            try:
                self.node.wait(30)
            except subprocess.TimeoutExpired:
                self.node.kill()
                self.node.wait(5)
        self.node = None

    def reset(self):
        import psycopg
        import redis

        self._stop_node()
        redis.Redis.from_url(self.redis_url).flushall()
        with psycopg.connect(self.pg_uri, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {DB_NAME}")
        http, listen = _free_port(), _free_port()
        env = dict(
            os.environ,
            WORCR_DATABASE_URL=_db_uri(self.pg_uri, DB_NAME),
            WORCR_REDIS_URL=self.redis_url,
            WORCR_HTTP=f"127.0.0.1:{http}",
            WORCR_LISTEN=f"127.0.0.1:{listen}",
            WORCR_NODE_ID="bench-peers",
        )
        log_path = Path(os.environ.get("BENCH_LOG_DIR", "/tmp")).parent / "node.log"
        self.node = subprocess.Popen(
            [WORCR_PYTHON, "-m", "worcr_node", "--log-level", "WARNING", "node"],
            cwd=ROOT,
            env=env,
            stdout=open(log_path, "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 60
        while "workers tcp://" not in log_path.read_text(errors="replace"):
            if self.node.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the Worcr node did not start; see {log_path}")
            time.sleep(0.1)
        self.node_addr = f"127.0.0.1:{listen}"
        self.client = self.loop.run_until_complete(worcr.Client.connect(self.node_addr))

    def enqueue_bulk(self, ids):
        specs = [{"kind": "noop", "args": [i]} for i in ids]
        self.loop.run_until_complete(self.client.enqueue_many(specs))

    def enqueue_one(self, i):
        self.loop.run_until_complete(self.client.enqueue("noop", i))

    def worker_cmds(self):
        cmd = [
            WORCR_PYTHON,
            "-m",
            "worcr.worker",
            "bench_worcr",
            "--nodes",
            self.node_addr,
            "--concurrency",
            "10",
            "--log-level",
            "WARNING",
        ]
        return [cmd, cmd]

    def close(self):
        self._stop_node()
        self.loop.close()


BENCHES = {"worcr": Worcr}
