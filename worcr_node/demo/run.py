"""Demo for `worcr dev --demo`: a worker with two job kinds, and a few jobs that complete
(and one that fails once, then succeeds on retry), printed as they happen."""

from __future__ import annotations

import asyncio
import random

from worcr import Client, JobContext, Worker

__all__ = ["run_demo"]


async def run_demo(worker_address: str, http_address: str, stop: asyncio.Event) -> None:
    worker = Worker(nodes=[worker_address], concurrency=4, worker_id="demo-worker")

    @worker.job("greet")
    async def greet(ctx: JobContext, name: str) -> str:
        await asyncio.sleep(0.2)
        print(f"  [demo worker] job {ctx.id[:13]}.. greet({name!r}) attempt {ctx.attempt}",
              flush=True)  # fmt: skip
        return f"hello, {name}"

    @worker.job("flaky")
    def flaky(ctx: JobContext, n: int) -> int:
        if ctx.attempt == 1:
            print(f"  [demo worker] job {ctx.id[:13]}.. flaky({n}) fails on attempt 1", flush=True)
            raise RuntimeError("first attempts fail in this demo")
        print(f"  [demo worker] job {ctx.id[:13]}.. flaky({n}) succeeds on attempt {ctx.attempt}",
              flush=True)  # fmt: skip
        return n * 2

    task = asyncio.create_task(worker.run(install_signal_handlers=False))
    await worker.ready.wait()
    async with Client(worker_address) as client:
        ids = []
        for name in ("Ada", "Grace", "Linus"):
            ids.append((await client.enqueue("greet", name)).id)
        ids.append((await client.enqueue("flaky", random.randint(1, 9), backoff={"base": 1})).id)
    print(f"  [demo] enqueued {len(ids)} jobs; see them at {http_address}/api/v1/jobs", flush=True)
    await stop.wait()
    worker.stop()
    await task
