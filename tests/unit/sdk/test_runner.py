"""Loading a handlers module for `worcr worker`, and the CLI end to end in a subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import worcr.registry
import worcr.runner
from worcr import Worker
from worcr.registry import Registry
from worcr.runner import load_worker, prepare_worker

if TYPE_CHECKING:
    from conftest import FakeNode

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path for throwaway handler modules, and a fresh default registry."""
    fresh = Registry()
    monkeypatch.setattr(worcr.registry, "default_registry", fresh)
    monkeypatch.setattr(worcr.runner, "default_registry", fresh)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def write(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(source))


def test_module_level_job_decorator_builds_a_worker(modules: Path) -> None:
    write(
        modules,
        "jobs_plain",
        """
        import worcr

        @worcr.job("a")
        async def a(ctx): ...
    """,
    )
    worker = load_worker("jobs_plain")
    assert worker.registry.kinds() == ["a"]


def test_worker_attribute_wins_and_takes_module_level_handlers(modules: Path) -> None:
    write(
        modules,
        "jobs_worker",
        """
        import worcr

        worker = worcr.Worker(tags=["gpu"], concurrency=2)

        @worker.job("mine")
        def mine(ctx): ...

        @worcr.job("shared")
        def shared(ctx): ...
    """,
    )
    worker = prepare_worker(
        "jobs_worker", nodes="n1:1,n2:2", concurrency=5, tags=None, yield_timeout=1.5
    )
    assert worker.registry.kinds() == ["mine", "shared"]
    assert (worker.tags, worker.concurrency, worker.nodes) == (["gpu"], 5, ["n1:1", "n2:2"])
    assert worker.yield_timeout == 1.5


def test_module_colon_attribute(modules: Path) -> None:
    write(
        modules,
        "jobs_named",
        """
        import worcr

        gpu = worcr.Worker()
        gpu.register("g", lambda ctx: None)
        other = 3
    """,
    )
    assert isinstance(load_worker("jobs_named:gpu"), Worker)
    with pytest.raises(LookupError, match=r"not a worcr\.Worker"):
        load_worker("jobs_named:other")


def test_module_without_handlers(modules: Path) -> None:
    write(modules, "jobs_empty", "x = 1\n")
    with pytest.raises(LookupError, match="registers no job handler"):
        load_worker("jobs_empty")
    assert worcr.runner.main(["jobs_missing_module_xyz"]) == 2


async def test_cli_runs_jobs_and_exits_cleanly_on_sigterm(
    tmp_path: Path, fake_node: FakeNode
) -> None:
    write(
        tmp_path,
        "cli_jobs",
        """
        import worcr

        @worcr.job("double")
        def double(ctx, n):
            return 2 * n
    """,
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worcr.worker", "cli_jobs",
        "--nodes", fake_node.address, "--concurrency", "3", "--tags", "a,b",
        cwd=tmp_path, env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await fake_node.wait_for(lambda: bool(fake_node.calls("hello")), within=20)
        hello = fake_node.calls("hello")[0]
        assert (hello["capacity"], hello["tags"], hello["kinds"]) == (6, ["a", "b"], ["double"])
        job = fake_node.add_job("double", [21])
        await fake_node.wait_for(lambda: bool(fake_node.items("ack")))
        assert fake_node.items("ack") == [
            {"id": job, "token": fake_node.jobs[job]["token"], "result": 42}
        ]
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            _, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    log = stderr.decode()
    assert process.returncode == 0, log
    assert "SIGTERM received" in log
    assert "Warning" not in log
    assert fake_node.calls("bye")
