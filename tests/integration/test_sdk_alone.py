"""The worker and producer SDK installs alone: `pip install worcr` pulls msgpack and nothing else,
and everything the SDK does works with nothing else importable.

The default dependencies are read from pyproject.toml. Then the SDK runs in child processes
without site-packages, where only the standard library, `msgpack` and the repository can be
imported: a producer enqueues through
`worcr.SyncClient`, a worker (`python -m worcr.worker`) runs the job, and what lands in
PostgreSQL is checked. The node's commands, in such an install, say in one line which extra
they need instead of failing on an import.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tomllib
import uuid
from pathlib import Path

import msgpack
import pytest

from tests.waiting import wait_until
from tests.workers import ROOT, SAMPLE
from worcr_node.node import Node


@pytest.fixture(scope="module")
def sdk_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A folder holding msgpack and nothing else, like the site-packages of `pip install worcr`
    (the code under test comes from the repository root)."""
    site = tmp_path_factory.mktemp("sdk-site")
    (site / "msgpack").symlink_to(Path(msgpack.__file__).parent)
    return f"{ROOT}{os.pathsep}{site}"


async def sdk_only(path: str, *args: str) -> asyncio.subprocess.Process:
    """Python without site-packages (`-S`): the standard library, then `path`."""
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": path}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-S", *args,
        cwd=ROOT, env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def outputs(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_the_default_install_needs_msgpack_only() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert [d.split(">")[0] for d in project["dependencies"]] == ["msgpack"]
    node = {d.split(">")[0].split("[")[0] for d in project["optional-dependencies"]["node"]}
    assert {"aiohttp", "asyncpg", "redis", "lupa", "quickjs-ng"} <= node


async def test_a_producer_and_a_worker_with_the_sdk_alone(
    node: Node, tmp_path: Path, sdk_path: str
) -> None:
    record = tmp_path / "record.txt"
    produce = (
        "import sys, worcr\n"
        "with worcr.SyncClient(sys.argv[1]) as client:\n"
        "    print(client.enqueue('sample.record', sys.argv[2]).id)\n"
    )
    proc = await sdk_only(sdk_path, "-c", produce, node.worker_address, str(record))
    rc, out, err = await outputs(proc)
    assert rc == 0, err
    job_id = uuid.UUID(out.strip())

    # the worker runs until the job is done, then is stopped like any worker (SIGTERM)
    worker = await sdk_only(sdk_path, "-m", "worcr.worker", SAMPLE, "--nodes", node.worker_address)
    try:

        async def completed() -> bool:
            row = await node.store.job_get(job_id)
            return row is not None and row["state"] == "completed"

        await wait_until(completed, 30)
    finally:
        if worker.returncode is None:
            worker.terminate()
        _, err_bytes = await asyncio.wait_for(worker.communicate(), 30)
    assert "Traceback" not in err_bytes.decode(), err_bytes.decode()[-3000:]
    assert record.read_text().split()[0] == str(job_id)


async def test_the_worker_command_runs_with_the_sdk_alone(sdk_path: str) -> None:
    rc, out, err = await outputs(
        await sdk_only(sdk_path, "-m", "worcr_node.cli", "worker", "--help")
    )
    assert rc == 0, err
    assert "--nodes" in out


async def test_node_commands_name_the_extra_they_need(sdk_path: str) -> None:
    for command in ("node", "dev", "migrate"):
        rc, out, err = await outputs(await sdk_only(sdk_path, "-m", "worcr_node.cli", command))
        assert rc == 2, (command, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1, err  # one line, no traceback
        assert f"worcr {command}: this install is the worker SDK only" in lines[0]
        assert "pip install 'worcr[node]'" in lines[0]
        assert "asyncpg" in lines[0]
