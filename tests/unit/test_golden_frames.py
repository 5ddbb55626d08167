"""Golden frames: the example frames of docs/protocol.md, checked against the code both ways.

tests/golden/frames.json (written by tests/golden/make_frames.py) holds every example frame of the
document as {name, direction, message, hex}; `message` is the msgpack value as JSON, with a `bin`
value written as {"$bin": "<hex>"}. These tests make sure that the codec encodes each message to
exactly the golden bytes and decodes them back, that the node's job encoder and the node's
handlers produce the same shapes, that the SDK can parse the pushed jobs, and that the document
shows exactly these frames (so the doc, the golden file and the code cannot drift apart).
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
import uuid
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tests.golden import make_frames
from tests.golden.make_frames import hex_block
from worcr import wire
from worcr.context import JobContext
from worcr.wire import ErrorCode, Limits, MsgType
from worcr_node.jobspec import SpecError, parse_job_spec
from worcr_node.store.pg import ClaimedJob
from worcr_node.transport import session

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = json.loads((ROOT / "tests" / "golden" / "frames.json").read_text())
DOC = (ROOT / "docs" / "protocol.md").read_text()
BY_NAME: dict[str, dict[str, Any]] = {f["name"]: f for f in GOLDEN}
NAMES = [f["name"] for f in GOLDEN]
PUSHES = [f["name"] for f in GOLDEN if f["message"][:2] == [MsgType.NOTIFICATION, "jobs"]]


def from_json(value: Any) -> Any:
    """The msgpack value a golden `message` describes ({"$bin": hex} is a bin value)."""
    if isinstance(value, dict):
        if set(value) == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def assert_same(got: Any, want: Any, path: str = "$") -> None:
    """Equal and of the same types all the way down (1 != 1.0 != True here), map order too."""
    assert type(got) is type(want), f"{path}: {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, dict):
        assert list(got) == list(want), f"{path}: keys {list(got)} != {list(want)}"
        for k in want:
            assert_same(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), f"{path}: length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{path}[{i}]")
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"


def on_wire(value: Any) -> Any:
    """A value as the peer sees it: encoded and decoded (a StrEnum member becomes a str)."""
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False)


def frame_of(name: str) -> bytes:
    return bytes.fromhex(BY_NAME[name]["hex"])


def message_of(name: str) -> list[Any]:
    msg: list[Any] = from_json(BY_NAME[name]["message"])
    return msg


def test_golden_file_is_well_formed() -> None:
    assert len(NAMES) == len(set(NAMES)), "frame names must be unique"
    assert len(PUSHES) >= 1
    for f in GOLDEN:
        assert set(f) == {"name", "direction", "message", "hex"}
        assert f["direction"] in ("client->node", "node->client")
        frame = bytes.fromhex(f["hex"])
        (size,) = struct.unpack(">I", frame[:4])
        assert size == len(frame) - 4 <= Limits().max_frame


# -- (1) encoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_encode_gives_golden_bytes(name: str) -> None:
    msg = message_of(name)
    assert wire.encode(msg) == frame_of(name)
    kind = msg[0]
    if kind == MsgType.REQUEST:
        built = wire.request(msg[1], msg[2], msg[3])
    elif kind == MsgType.RESPONSE:
        built = wire.response(msg[1], msg[2], msg[3])
    else:
        built = wire.notification(msg[1], msg[2])
    assert built == frame_of(name)


# -- (2) decoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_decode_gives_golden_message(name: str) -> None:
    decoder = wire.FrameDecoder()
    (msg,) = decoder.feed(frame_of(name))
    assert_same(msg, message_of(name))
    assert decoder.buffered == 0


def test_decode_whole_session_one_byte_at_a_time() -> None:
    stream = b"".join(frame_of(n) for n in NAMES)
    decoder = wire.FrameDecoder()
    got: list[list[Any]] = []
    for i in range(len(stream)):
        got += decoder.feed(stream[i : i + 1])
    assert len(got) == len(NAMES)
    for msg, name in zip(got, NAMES, strict=True):
        assert_same(msg, message_of(name))


# -- (3) the document shows exactly these frames --------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_doc_shows_golden_frame_verbatim(name: str) -> None:
    block = hex_block(name, frame_of(name))
    assert f"```hex\n{block}\n```" in DOC, f"docs/protocol.md lacks the hex of frame {name}"


def test_doc_has_no_other_hex_frames() -> None:
    blocks = re.findall(r"```hex\n(.*?)```", DOC, flags=re.DOTALL)
    shown: dict[str, str] = {}
    for block in blocks:
        lines = block.splitlines()
        head = re.fullmatch(r"; frame (\S+)", lines[0])
        assert head is not None, f"a hex block must start with '; frame NAME': {lines[0]!r}"
        data = "".join(line for line in lines[1:] if not line.startswith(";"))
        shown[head.group(1)] = data.replace(" ", "")
    assert sorted(shown) == sorted(NAMES)
    for name, data in shown.items():
        assert data == BY_NAME[name]["hex"], name


# -- (4) the node's job encoder and the SDK's parser ----------------------------------------------


def _raw_jobs(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: session._Raw(msgpack.packb(v)) if k == "args" else v for k, v in job.items()}
        for job in jobs
    ]


@pytest.mark.parametrize("name", PUSHES)
def test_node_job_encoder_gives_golden_push(name: str) -> None:
    jobs = message_of(name)[2]["jobs"]
    assert session.encode_jobs(_raw_jobs(jobs)) == frame_of(name)


class _Hub(session.Hub):
    def __init__(self) -> None:
        super().__init__(
            manager=None,  # type: ignore[arg-type]
            node_id="node-a",
            clock=None,  # type: ignore[arg-type]
            limits=Limits(),
            heartbeat_ms=1000,
            token="s3cret",
            add_consumer=lambda s: None,
            remove_consumer=lambda s: None,
            wake_dispatch=lambda: None,
        )


def _session() -> tuple[session.Session, list[bytes]]:
    sent: list[bytes] = []
    s = session.Session(_Hub(), sent.append, lambda: None, "test")
    return s, sent


@pytest.mark.parametrize("name", PUSHES)
def test_session_deliver_gives_golden_push(name: str) -> None:
    """The node's real delivery path (a claimed job as read from storage) writes the frame."""
    jobs = message_of(name)[2]["jobs"]
    s, sent = _session()
    s.capacity = 10
    claimed = [
        ClaimedJob(
            id=uuid.UUID(j["id"]),
            token=j["token"],
            kind=j["kind"],
            args=msgpack.packb(j["args"]),
            tags=j["tags"],
            tenant=j["tenant"],
            attempt=j["attempt"],
            max_attempts=j["max_attempts"],
            reserve_for=j["reserve_for"],
            enqueued_at=j["enqueued_at"],
            worker_id="w-1",
        )
        for j in jobs
    ]
    assert s.deliver(claimed)
    assert sent == [frame_of(name)]
    assert s.held == len(jobs)


@pytest.mark.parametrize("name", PUSHES)
def test_sdk_parses_golden_push(name: str) -> None:
    (msg,) = wire.FrameDecoder().feed(frame_of(name))
    assert msg[:2] == [MsgType.NOTIFICATION, "jobs"]
    for job, want in zip(msg[2]["jobs"], message_of(name)[2]["jobs"], strict=True):
        ctx = JobContext.from_wire(job)
        assert (ctx.id, ctx.token, ctx.kind) == (want["id"], want["token"], want["kind"])
        assert_same(ctx.args, want["args"])
        assert list(ctx.tags) == want["tags"]
        assert (ctx.tenant, ctx.attempt, ctx.max_attempts) == (
            want["tenant"],
            want["attempt"],
            want["max_attempts"],
        )
        assert (ctx.reserve_for, ctx.enqueued_at) == (want["reserve_for"], want["enqueued_at"])


# -- the node's answers have the golden shapes ----------------------------------------------------


async def test_hello_result_has_golden_shape() -> None:
    s, _ = _session()
    params = message_of("hello-request")[3]
    result = await session.on_hello(s, params)
    want = message_of("hello-response")[3]
    assert list(result) == list(want)
    result["session"] = want["session"]
    assert_same(on_wire(result), want)
    assert re.fullmatch(r"[0-9a-f]{32}", want["session"])


async def test_report_results_have_golden_shape() -> None:
    s, _ = _session()
    refs = message_of("ack-request")[3]["jobs"]
    assert_same(on_wire(session.report_results(s, refs, [True])), message_of("ack-response")[3])
    refs = message_of("ack-stale-request")[3]["jobs"]
    stale = session.report_results(s, refs, [False])
    assert_same(on_wire(stale), message_of("ack-stale-response")[3])


async def test_capacity_and_bye_results_have_golden_shape() -> None:
    s, _ = _session()
    s.authenticated = True
    assert_same(await session.on_capacity(s, message_of("capacity-request")[3]), {})
    assert_same(await session.on_bye(s, message_of("bye-request")[3]), {})
    assert message_of("capacity-response")[3] == message_of("bye-response")[3] == {}


def test_enqueue_error_message_is_the_nodes() -> None:
    spec = message_of("enqueue-bad-request")[3]["jobs"][0]
    with pytest.raises(SpecError) as exc:
        parse_job_spec(spec, 0.0, Limits())
    error = message_of("enqueue-error-response")[2]
    # JobManager.parse prefixes the index of the bad spec; the session answers BAD_REQUEST.
    node_error = wire.RemoteError(ErrorCode.BAD_REQUEST, f"jobs[0].{exc.value}").to_wire()
    assert_same(error, on_wire(node_error))


def test_error_notification_is_the_decoders() -> None:
    with pytest.raises(wire.ProtocolError) as exc:
        wire.FrameDecoder().feed(struct.pack(">I", 0xFFFFFFF0))
    params = message_of("error-notification")[2]
    assert_same(params, on_wire({"code": exc.value.code, "message": exc.value.message}))


def test_every_golden_error_code_is_known() -> None:
    codes = set()
    for name in NAMES:
        msg = message_of(name)
        if msg[0] == MsgType.RESPONSE and msg[2] is not None:
            codes.add(msg[2]["code"])
        if msg[0] == MsgType.RESPONSE and isinstance(msg[3], dict):
            codes |= {r["code"] for r in msg[3].get("results", []) if r is not None}
        if msg[:2] == [MsgType.NOTIFICATION, "error"]:
            codes.add(msg[2]["code"])
    assert codes
    assert codes <= {c.value for c in ErrorCode}


def test_doc_tables_list_every_error_code_and_limit() -> None:
    for code in ErrorCode:
        assert f"| `{code.value}` |" in DOC, f"error code {code.value} missing from the table"
    limits = Limits()
    for field in dataclasses.fields(Limits):
        row = f"| `{field.name}` | {getattr(limits, field.name)} |"
        assert row in DOC, f"limit {field.name} missing from the table (or its value is wrong)"


def test_generator_reproduces_golden_file() -> None:
    """tests/golden/make_frames.py (which made frames.json) still gives the same frames."""
    assert make_frames.build() == GOLDEN
