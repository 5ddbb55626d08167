"""Connection bounds as pure logic: their settings, short quotes of client input, the decoder's
frame limit raised after hello (the bounds against real sockets: tests/integration)."""

from __future__ import annotations

import pytest

from worcr import wire
from worcr.wire import ErrorCode, Limits, ProtocolError
from worcr_node.config import Config, ConfigError


def test_settings_defaults_and_overrides() -> None:
    limits = Config.from_env({}).limits
    assert (limits.hello_timeout, limits.max_connections, limits.max_connections_per_ip) == (
        10,
        4096,
        256,
    )
    limits = Config.from_env(
        {
            "WORCR_HELLO_TIMEOUT": "3",
            "WORCR_MAX_CONNECTIONS": "100",
            "WORCR_MAX_CONNECTIONS_PER_IP": "7",
            "WORCR_MAX_LOG_LINES": "9",
        }
    ).limits
    assert (limits.hello_timeout, limits.max_connections, limits.max_connections_per_ip) == (
        3,
        100,
        7,
    )
    assert limits.max_log_lines == 9
    assert limits.max_frame == Limits().max_frame  # the rest keep their defaults


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("WORCR_HELLO_TIMEOUT", "0"),
        ("WORCR_HELLO_TIMEOUT", "3601"),
        ("WORCR_HELLO_TIMEOUT", "1.5"),
        ("WORCR_MAX_CONNECTIONS", "0"),
        ("WORCR_MAX_CONNECTIONS", "many"),
        ("WORCR_MAX_CONNECTIONS_PER_IP", "-1"),
        ("WORCR_MAX_CONNECTIONS_PER_IP", "1000001"),
    ],
)
def test_bad_settings_name_the_variable_and_range(var: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"{var}=.*expected an integer from"):
        Config.from_env({var: value})


def test_a_hello_fits_in_the_pre_hello_frame_limit() -> None:
    # the largest `running` the rules allow, each item with reserve_for, plus every tag
    limits = Limits()
    running = [
        {"id": "0" * 36, "token": (1 << 63) - 1, "reserve_for": 604800.0}
        for _ in range(limits.max_batch)
    ]
    hello = {
        "protocol": 1,
        "token": "t" * 64,
        "worker_id": "w" * 128,
        "capacity": limits.max_capacity,
        "tags": ["g" * limits.max_tag_len] * limits.max_tags,
        "kinds": ["k" * 64] * 200,
        "running": running,
    }
    assert len(wire.request(0xFFFFFFFF, "hello", hello)) - 4 <= limits.max_hello_frame


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("short", "'short'"),
        ("x" * 64, repr("x" * 64)),
        ("x" * 1_000_000, repr("x" * 64) + "..."),
        (b"y" * 100, repr(b"y" * 64) + "..."),
        (12, "12"),
        (None, "None"),
        (True, "True"),
        (1.5, "1.5"),
        (["z" * 1_000_000], "a list"),
        ({"k": "v"}, "a dict"),
    ],
)
def test_quote_never_shows_more_than_a_prefix(value: object, quoted: str) -> None:
    assert wire.quote(value) == quoted


def test_decoder_limit_can_be_raised_between_frames() -> None:
    small = wire.FrameDecoder(100)
    frame = wire.request(1, "m" * 200, {})
    with pytest.raises(ProtocolError) as info:
        small.feed(frame)
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    decoder = wire.FrameDecoder(100)
    decoder.feed(frame[:3])  # the length prefix is not whole yet: not judged
    decoder.max_frame = 1000
    assert decoder.max_frame == 1000
    [msg] = decoder.feed(frame[3:])
    assert msg[2] == "m" * 200


def test_unknown_message_type_is_quoted_short() -> None:
    with pytest.raises(ProtocolError) as info:
        wire.FrameDecoder().feed(wire.encode(["t" * 500_000]))
    assert info.value.code == ErrorCode.BAD_FRAME
    assert len(info.value.message) < 200
