"""asyncpg's pool warns with a full traceback each time it cannot restore its connections (at
every PostgreSQL restart): the node's store makes that one line, keeping the error's text."""

from __future__ import annotations

import logging

import pytest

import worcr_node.store.pg  # noqa: F401  (installs the filter)


def test_asyncpg_pool_warning_is_one_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="asyncpg.pool")
    try:
        raise ConnectionRefusedError("connect call failed ('127.0.0.1', 5432)")
    except ConnectionRefusedError:
        logging.getLogger("asyncpg.pool").warning(
            "Failed to restore the pool connection floor; retrying", exc_info=True
        )
    [record] = caplog.records
    assert record.exc_info is None
    assert record.getMessage() == (
        "Failed to restore the pool connection floor; retrying: ConnectionRefusedError: "
        "connect call failed ('127.0.0.1', 5432)"
    )
    assert "Traceback" not in caplog.text
