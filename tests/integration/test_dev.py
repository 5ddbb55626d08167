"""The README's first command as a newcomer runs it: `worcr dev --demo` in a subprocess.

It honours the WORCR_* variables like `worcr node`, brings up PostgreSQL, Redis, a node and the
demo (whose jobs complete), logs nothing alarming on a normal start or restart, stops everything it
started on Ctrl-C, and says in one line what to do when its port is taken.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from worcr_node.embedded import free_port

pytestmark = pytest.mark.timeout(180)

ALARMS = ("WARNING", "ERROR", "CRITICAL", "Traceback")


class Dev:
    """One `worcr dev` process; its output is collected line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def until(self, text: str, timeout: float = 90) -> str:
        """Read output until a line containing `text`; fail with all output if it never comes."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    pytest.fail(f"worcr dev ended before {text!r}:\n" + "\n".join(self.lines))
                line = raw.decode().rstrip("\n")
                self.lines.append(line)
                if text in line:
                    return line

    async def interrupt(self) -> int:
        """Ctrl-C, then the rest of the output; the exit code."""
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.stdout is not None
        rest = await asyncio.wait_for(self.proc.stdout.read(), 90)
        self.lines += rest.decode().splitlines()
        return await asyncio.wait_for(self.proc.wait(), 30)


async def start_dev(state: Path, *args: str, **env: str) -> Dev:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WORCR_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worcr_node", "dev", "--dir", str(state), *args,
        env={**environment, "PYTHONUNBUFFERED": "1", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    return Dev(proc)


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return int(answer.status)


@pytest.fixture
async def dev_dir(tmp_path: Path) -> AsyncIterator[Path]:
    yield tmp_path / "state"
    for proc in psutil.process_iter(["cmdline"]):  # a failed test must not leave servers behind
        if any(str(tmp_path) in part for part in proc.info["cmdline"] or ()):
            proc.kill()


async def test_dev_demo_runs_restarts_quietly_and_leaves_nothing_behind(dev_dir: Path) -> None:
    http, listen = free_port(), free_port()
    for run in (1, 2):
        dev = await start_dev(
            dev_dir, "--demo", WORCR_HTTP=f"127.0.0.1:{http}", WORCR_LISTEN=f"127.0.0.1:{listen}"
        )
        line = await dev.until("HTTP API")
        assert f"http://127.0.0.1:{http}" in line, line  # the variables were honoured
        assert f"tcp://127.0.0.1:{listen}" in line, line
        await dev.until("succeeds on attempt 2")  # the demo's flaky job, retried
        assert await asyncio.to_thread(get, f"http://127.0.0.1:{http}/readyz") == 200
        children = descendants(dev.proc.pid)
        assert len(children) >= 2, children  # PostgreSQL (and its workers) and Redis
        assert await dev.interrupt() == 0, "\n".join(dev.lines)
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"run {run}: left behind {alive}"
        alarms = [line for line in dev.lines if any(word in line for word in ALARMS)]
        assert not alarms, f"run {run}:\n" + "\n".join(dev.lines)


async def test_dev_flags_win_over_variables(dev_dir: Path) -> None:
    http = free_port()
    dev = await start_dev(
        dev_dir, "--http", f"127.0.0.1:{http}", "--listen", "127.0.0.1:0",
        WORCR_HTTP="127.0.0.1:1", WORCR_LISTEN="127.0.0.1:1",
    )  # fmt: skip
    line = await dev.until("HTTP API")
    assert f"http://127.0.0.1:{http}" in line, line
    assert await dev.interrupt() == 0, "\n".join(dev.lines)


@pytest.mark.parametrize(
    ("args", "env", "variable"),
    [
        (["--listen", "127.0.0.1:{port}"], {}, "WORCR_LISTEN"),
        ([], {"WORCR_HTTP": "127.0.0.1:{port}"}, "WORCR_HTTP"),
    ],
)
async def test_dev_taken_port_is_one_clear_line(
    dev_dir: Path, args: list[str], env: dict[str, str], variable: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        free = {"WORCR_HTTP": "127.0.0.1:0", "WORCR_LISTEN": "127.0.0.1:0"}
        variables = free | {k: v.format(port=port) for k, v in env.items()}
        dev = await start_dev(dev_dir, *(a.format(port=port) for a in args), **variables)
        assert dev.proc.stdout is not None
        out = (await asyncio.wait_for(dev.proc.stdout.read(), 60)).decode()
        code = await dev.proc.wait()
    assert code == 2, out
    assert out.count("\n") == 1, out
    assert f"127.0.0.1:{port}" in out, out
    assert "already listens there" in out, out
    assert f"{variable}=HOST:PORT" in out, out


async def test_dev_bad_flag_names_it(dev_dir: Path) -> None:
    dev = await start_dev(dev_dir, "--listen", "nonsense")
    assert dev.proc.stdout is not None
    out = (await asyncio.wait_for(dev.proc.stdout.read(), 60)).decode()
    assert await dev.proc.wait() == 2, out
    assert out.startswith("worcr dev: --listen 'nonsense' is not valid"), out
