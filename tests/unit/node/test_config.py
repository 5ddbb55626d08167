from __future__ import annotations

import pytest

from worcr_node.config import Config, ConfigError, HostPort


def test_defaults_and_overrides() -> None:
    c = Config.from_env({})
    assert c.http == HostPort("127.0.0.1", 7400)
    assert c.listen == HostPort("127.0.0.1", 7401)
    c = Config.from_env({"WORCR_HTTP": "0.0.0.0:80", "WORCR_NODE_ID": "n1"})
    assert c.http == HostPort("0.0.0.0", 80)
    assert c.node_id == "n1"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("WORCR_HTTP", "7400"),
        ("WORCR_LISTEN", "host:99999"),
        ("WORCR_DATABASE_URL", "mysql://x"),
        ("WORCR_REDIS_URL", "localhost:6379"),
        ("WORCR_NODE_ID", "bad id!"),
        ("WORCR_HEARTBEAT_MS", "soon"),
    ],
)
def test_bad_values_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError, match=var):
        Config.from_env({var: value})
