"""Every node setting is read by config.py, listed by `worcr node --help` with its default, and
documented in README's configuration table with the same default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from worcr_node.cli import main
from worcr_node.config import Config
from worcr_node.settings import SETTINGS

ROOT = Path(__file__).resolve().parents[3]


def readme_table() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Configuration") :]
    section = section[: section.index("\n## ", 1)]
    rows = re.findall(r"^\| `(WORCR_\w+)` \| ([^|]*) \|", section, re.M)
    return {name: default.strip().strip("`") for name, default in rows}


def test_every_variable_config_reads_is_a_listed_setting() -> None:
    read = set(re.findall(r'"(WORCR_\w+)"', (ROOT / "worcr_node/config.py").read_text()))
    listed = {s.variable for s in SETTINGS}
    assert read - listed == set(), "read by config.py, missing from settings.py"
    assert listed - read == {"WORCR_LOG_LEVEL"}  # read by the CLI, before the config


def test_readme_documents_every_setting_with_the_same_default() -> None:
    table = readme_table()
    assert set(table) == {s.variable for s in SETTINGS}
    for s in SETTINGS:
        assert table[s.variable] == s.default, s.variable


def test_numeric_defaults_are_the_configs() -> None:
    env = {s.variable: s.default for s in SETTINGS if s.default.isdigit()}
    assert Config.from_env(env) == Config.from_env({}).with_(node_id=Config.from_env({}).node_id)


@pytest.mark.parametrize("command", ["node", "dev", "migrate"])
def test_help_lists_every_setting_with_its_default(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for s in SETTINGS:
        assert re.search(rf"{s.variable} .*\(default {re.escape(s.default)}\)", out), s.variable


def test_worker_help_exits_zero_and_explains_the_node_list(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["worker", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # as one line, whatever the wrapping
    assert "failover list" in out
    assert "(default: as many as --concurrency" in out  # the prefetch default
    for variable in ("WORCR_NODES", "WORCR_CONCURRENCY", "WORCR_PREFETCH", "WORCR_TOKEN"):
        assert variable in out
