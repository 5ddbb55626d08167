"""Generate the golden frames of docs/protocol.md (section 12) into tests/golden/frames.json.

    .venv/bin/python tests/golden/make_frames.py            # rewrite frames.json
    .venv/bin/python tests/golden/make_frames.py --markdown # also print the doc's example blocks

Every frame is built with `worcr.wire` (`request`, `response`, `notification`) from fixed ids and
values, so the output is deterministic. In frames.json a `message` is the msgpack value as JSON;
a msgpack `bin` value is written as {"$bin": "<hex>"}. tests/unit/test_golden_frames.py checks
the file against the codec, the node's job encoder and the document.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from worcr import wire

HERE = Path(__file__).resolve().parent
OUT = HERE / "frames.json"

JOB1 = "01907b8e-6f3a-7c2d-9a41-3f5e8b2c1d01"
JOB2 = "01907b8e-6f3a-7c2d-9a41-3f5e8b2c1d02"
ENQUEUED_AT = 1720000000.25
LIMITS = wire.Limits()
STALE_MESSAGE = (
    f"job {JOB2}: this attempt no longer holds the job (lease expired, cancelled or "
    "already reported); its result was not recorded"
)


def _job(job_id: str, token: int, args: list[Any], attempt: int, max_attempts: int,
         reserve_for: float) -> dict[str, Any]:  # fmt: skip
    return {
        "id": job_id,
        "token": token,
        "kind": "email.send",
        "args": args,
        "tags": ["eu"],
        "tenant": "default",
        "attempt": attempt,
        "max_attempts": max_attempts,
        "reserve_for": reserve_for,
        "enqueued_at": ENQUEUED_AT,
    }


ARGS1 = ["bob@example.com", {"template": "welcome"}]
ARGS2 = ["eve@example.com", {"template": "reminder"}]

# (name, direction, builder function name, arguments): the order is the order of the example.
FRAMES: list[tuple[str, str, str, tuple[Any, ...]]] = [
    ("hello-request", "client->node", "request", (1, "hello", {
        "protocol": 1,
        "token": "s3cret",
        "worker_id": "w-1",
        "name": "example worker",
        "tags": ["eu"],
        "capacity": 2,
        "kinds": ["email.send"],
    })),
    ("hello-response", "node->client", "response", (1, None, {
        "node_id": "node-a",
        "session": "8c5e2f1a9b7d4e3c6a0f1b2d3c4e5f60",
        "worker_id": "w-1",
        "heartbeat_ms": 1000,
        "limits": {
            "max_frame": LIMITS.max_frame,
            "max_args": LIMITS.max_args,
            "max_result": LIMITS.max_result,
            "max_batch": LIMITS.max_batch,
            "max_tags": LIMITS.max_tags,
        },
    })),
    ("enqueue-request", "client->node", "request", (2, "enqueue", {"jobs": [
        {"kind": "email.send", "args": ARGS1, "id": JOB1, "tags": ["eu"]},
        {"kind": "email.send", "args": ARGS2, "id": JOB2, "tags": ["eu"], "max_attempts": 3,
         "reserve_for": 30},
    ]})),
    ("enqueue-response", "node->client", "response", (2, None, {"jobs": [
        {"id": JOB1, "state": "queued", "duplicate": False},
        {"id": JOB2, "state": "queued", "duplicate": False},
    ]})),
    ("jobs-push", "node->client", "notification", ("jobs", {"jobs": [
        _job(JOB1, 1, ARGS1, 1, 25, 60.0),
        _job(JOB2, 1, ARGS2, 1, 3, 30.0),
    ]})),
    ("heartbeat", "client->node", "notification", ("heartbeat", {})),
    ("ack-request", "client->node", "request", (3, "ack", {"jobs": [
        {"id": JOB1, "token": 1,
         "result": {"message_id": "m-42", "digest": bytes.fromhex("9f86d081")}},
    ]})),
    ("ack-response", "node->client", "response", (3, None, {"results": [None]})),
    ("fail-request", "client->node", "request", (4, "fail", {"jobs": [
        {"id": JOB2, "token": 1, "error": "SMTPTemporaryError: 451 try again later",
         "backtrace": "File \"mail.py\", line 12, in send\nSMTPTemporaryError: 451\n",
         "retryable": True},
    ]})),
    ("fail-response", "node->client", "response", (4, None, {"results": [None]})),
    ("jobs-push-retry", "node->client", "notification", ("jobs", {"jobs": [
        _job(JOB2, 2, ARGS2, 2, 3, 30.0),
    ]})),
    ("cancel", "node->client", "notification", ("cancel", {
        "jobs": [{"id": JOB2, "token": 2}], "reason": "cancelled",
    })),
    ("ack-stale-request", "client->node", "request", (5, "ack", {"jobs": [
        {"id": JOB2, "token": 2},
    ]})),
    ("ack-stale-response", "node->client", "response", (5, None, {"results": [
        {"code": "STALE_TOKEN", "message": STALE_MESSAGE, "retryable": False},
    ]})),
    ("enqueue-bad-request", "client->node", "request", (6, "enqueue", {"jobs": [{"kind": ""}]})),
    ("enqueue-error-response", "node->client", "response", (6, {
        "code": "BAD_REQUEST", "message": "jobs[0].kind: expected a non-empty string",
        "retryable": False,
    }, None)),
    ("capacity-request", "client->node", "request", (7, "capacity", {"capacity": 0})),
    ("capacity-response", "node->client", "response", (7, None, {})),
    ("bye-request", "client->node", "request", (8, "bye", {})),
    ("bye-response", "node->client", "response", (8, None, {})),
    ("error-notification", "node->client", "notification", ("error", {
        "code": "FRAME_TOO_LARGE",
        "message": "frame of 4294967280 bytes is over the limit of 1048576 bytes",
    })),
]  # fmt: skip

_TYPES = {"request": wire.MsgType.REQUEST, "response": wire.MsgType.RESPONSE,
          "notification": wire.MsgType.NOTIFICATION}  # fmt: skip


def to_json(value: Any) -> Any:
    """A msgpack value as JSON: bin becomes {"$bin": hex}; everything else maps directly."""
    if isinstance(value, bytes):
        return {"$bin": value.hex()}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def hex_block(name: str, frame: bytes) -> str:
    """The frame as shown in docs/protocol.md: length prefix, then the body, 32 bytes a line."""
    body = frame[4:]
    lines = [
        f"; frame {name}",
        f"; length prefix: {len(body)} bytes follow",
        frame[:4].hex(" "),
        "; body",
    ]
    lines += [body[i : i + 32].hex(" ") for i in range(0, len(body), 32)]
    return "\n".join(lines)


def jsonish(value: Any, indent: int = 0) -> str:
    """A msgpack value in the doc's JSON-ish notation: nil, bin(hex), floats with a dot."""
    pad = "  " * indent
    if isinstance(value, bytes):
        return f"bin({value.hex(' ')})"
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return json.dumps(value)
    inline = _inline(value)
    if len(pad) + len(inline) <= 90:
        return inline
    if isinstance(value, dict):
        items = [f"{pad}  {json.dumps(k)}: {jsonish(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    items = [f"{pad}  {jsonish(v, indent + 1)}" for v in value]
    return "[\n" + ",\n".join(items) + f"\n{pad}]"


def jsonish_message(message: list[Any]) -> str:
    """A whole message: its first elements inline, a long params/result/error map expanded."""
    inline = _inline(message)
    if len(inline) <= 90:
        return inline
    return "[" + ", ".join(jsonish(v) for v in message) + "]"


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_inline(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    return jsonish(value)


def build() -> list[dict[str, Any]]:
    out = []
    for name, direction, kind, args in FRAMES:
        frame: bytes = getattr(wire, kind)(*args)
        message = [int(_TYPES[kind]), *args]
        out.append(
            {"name": name, "direction": direction, "message": to_json(message), "hex": frame.hex()}
        )
    return out


def main(argv: list[str]) -> int:
    frames = build()
    OUT.write_text(json.dumps(frames, indent=2) + "\n")
    print(f"wrote {len(frames)} frames to {OUT}", file=sys.stderr)
    if "--markdown" in argv:
        for (name, _d, kind, args), f in zip(FRAMES, frames, strict=True):
            message = [int(_TYPES[kind]), *args]
            print(f"#### {name}\n\n```\n{jsonish_message(message)}\n```\n")
            print(f"```hex\n{hex_block(name, bytes.fromhex(f['hex']))}\n```\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
