"""The real `worcr` command: bad configuration stops the node with a clear message."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run_node(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worcr_node", "node"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("var", "value"),
    [("WORCR_HTTP", "nonsense"), ("WORCR_DATABASE_URL", "mysql://x/y"), ("WORCR_NODE_ID", "a b")],
)
def test_bad_config_names_the_variable(var: str, value: str) -> None:
    proc = run_node(**{var: value})
    assert proc.returncode == 2
    assert var in proc.stderr
    assert "expected" in proc.stderr


def test_unreachable_database_fails_start_with_message() -> None:
    proc = run_node(
        WORCR_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
        WORCR_HTTP="127.0.0.1:0",
        WORCR_LISTEN="127.0.0.1:0",
    )
    assert proc.returncode == 1
    assert "could not start" in proc.stderr
