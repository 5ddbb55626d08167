"""Wire protocol v1: framing, message shapes, limits and error codes.

Shared by the node's transports and the SDK (the node imports this module; the SDK never imports
the node). A frame is a 4-byte big-endian unsigned length followed by that many bytes of one
msgpack value. Messages follow msgpack-RPC:

    request       [0, msgid, method, params]
    response      [1, msgid, error, result]      error is nil or {"code", "message", "retryable"}
    notification  [2, method, params]

`params` is always a map. Both peers may send requests and notifications; `msgid` is a uint32
chosen by the sender of the request and unique among its own requests in flight.
See docs/protocol.md for every method.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

import msgpack

__all__ = [
    "HEADER",
    "PROTOCOL_VERSION",
    "ErrorCode",
    "FrameDecoder",
    "Limits",
    "MsgType",
    "ProtocolError",
    "RemoteError",
    "encode",
    "notification",
    "quote",
    "quoted",
    "request",
    "response",
]

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">I")


class MsgType(IntEnum):
    REQUEST = 0
    RESPONSE = 1
    NOTIFICATION = 2


class ErrorCode(StrEnum):
    """Error codes a client can act on. `retryable` in the error map says whether to retry."""

    BAD_FRAME = "BAD_FRAME"  # not msgpack, not a message array, truncated: connection closed
    FRAME_TOO_LARGE = "FRAME_TOO_LARGE"  # length prefix over the limit: connection closed
    BAD_REQUEST = "BAD_REQUEST"  # a field is missing, of the wrong type or over a limit
    UNKNOWN_METHOD = "UNKNOWN_METHOD"
    NOT_AUTHENTICATED = "NOT_AUTHENTICATED"  # a method other than hello before hello
    UNAUTHORIZED = "UNAUTHORIZED"  # bad token, or token lacks the scope
    UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
    STALE_TOKEN = "STALE_TOKEN"  # the attempt's lease is gone: job re-dispatched, cancelled, done
    NOT_FOUND = "NOT_FOUND"
    INVALID_STATE = "INVALID_STATE"  # e.g. cancel of a completed job
    CONFLICT = "CONFLICT"  # HTTP API: a rule with that name exists, or too many rules
    UNAVAILABLE = "UNAVAILABLE"  # storage unreachable: retry later (retryable)
    SHUTTING_DOWN = "SHUTTING_DOWN"  # node is stopping: reconnect elsewhere (retryable)
    TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"  # refused at connect: node or peer address full
    INTERNAL = "INTERNAL"


@dataclass(frozen=True)
class Limits:
    """Explicit size limits, enforced by the node and documented in docs/protocol.md."""

    max_frame: int = 1 << 20  # bytes of one frame body
    max_hello_frame: int = 128 << 10  # bytes of one frame body before a hello succeeded
    hello_timeout: int = 10  # seconds a connection has to complete hello (node setting)
    max_connections: int = 4096  # connections to a node's worker port (node setting)
    max_connections_per_ip: int = 256  # of them from one peer address (node setting)
    max_unsent: int = 1 << 20  # bytes queued for a connection before the node stops reading it
    max_echo: int = 64  # characters of a client's value quoted in an error message
    max_args: int = 256 << 10  # bytes of a job's msgpack-encoded args
    max_result: int = 64 << 10  # bytes of a job's msgpack-encoded result
    max_depth: int = 32  # levels of nested arrays and maps in args and a result ([] is one)
    max_tags: int = 32
    max_tag_len: int = 128
    max_kind_len: int = 128
    max_tenant_len: int = 128
    max_batch: int = 1000  # jobs per enqueue, results per ack/fail/yield
    max_error_len: int = 4 << 10  # characters of an error message
    max_backtrace_len: int = 32 << 10
    max_capacity: int = 10_000
    max_in_flight_requests: int = 1024  # per connection
    max_checkpoints: int = 64 << 10  # bytes of a job's checkpoints, all names, as JSON
    max_progress: int = 16 << 10  # bytes of a job's progress counters, all names, as JSON
    max_life_name: int = 128  # characters of a checkpoint or progress counter name
    max_log_line: int = 8 << 10  # characters of one log line (longer lines are cut)
    max_log_batch: int = 1000  # lines in one `log` request
    max_log_lines: int = 100_000  # lines stored per attempt (further lines are dropped)


class ProtocolError(Exception):
    """A frame that cannot be understood; the connection must be closed after reporting it."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class RemoteError(Exception):
    """An error answered by the peer for one request."""

    def __init__(self, code: str, message: str, retryable: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "retryable": self.retryable}


_packer = msgpack.Packer(use_bin_type=True)


def encode(message: list[Any]) -> bytes:
    """One complete frame (header + body) for a message."""
    body: bytes = _packer.pack(message)
    return HEADER.pack(len(body)) + body


def request(msgid: int, method: str, params: dict[str, Any]) -> bytes:
    return encode([MsgType.REQUEST, msgid, method, params])


def response(msgid: int, error: dict[str, Any] | None, result: Any) -> bytes:
    return encode([MsgType.RESPONSE, msgid, error, result])


def notification(method: str, params: dict[str, Any]) -> bytes:
    return encode([MsgType.NOTIFICATION, method, params])


class FrameDecoder:
    """Incremental decoder: feed bytes, get complete messages; raises ProtocolError on garbage.

    Messages are validated for shape only (type tag, msgid, method, params map); the meaning of
    params is checked by whoever handles the method.
    """

    __slots__ = ("_buf", "_max_frame")

    def __init__(self, max_frame: int = Limits.max_frame) -> None:
        self._buf = bytearray()
        self._max_frame = max_frame

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def max_frame(self) -> int:
        """The largest frame body accepted; checked on each length prefix (raised by the node
        once a hello succeeds)."""
        return self._max_frame

    @max_frame.setter
    def max_frame(self, value: int) -> None:
        self._max_frame = value

    def feed(self, data: bytes) -> list[list[Any]]:
        buf = self._buf
        buf += data
        out: list[list[Any]] = []
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            (size,) = HEADER.unpack_from(buf, pos)
            if size > self._max_frame:
                raise ProtocolError(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"frame of {size} bytes is over the limit of {self._max_frame} bytes",
                )
            if n - pos - 4 < size:
                break
            body = bytes(buf[pos + 4 : pos + 4 + size])
            pos += 4 + size
            out.append(decode_message(body))
        if pos:
            del buf[:pos]
        return out


def decode_message(body: bytes) -> list[Any]:
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several types for malformed input
        raise ProtocolError(ErrorCode.BAD_FRAME, f"frame is not valid msgpack ({exc})") from None
    if not isinstance(msg, list) or not msg:
        raise ProtocolError(ErrorCode.BAD_FRAME, "a message must be a non-empty msgpack array")
    kind = msg[0]
    if kind == MsgType.REQUEST:
        if (
            len(msg) != 4
            or not _is_msgid(msg[1])
            or not isinstance(msg[2], str)
            or not isinstance(msg[3], dict)
        ):
            raise ProtocolError(
                ErrorCode.BAD_FRAME, "a request must be [0, msgid:uint32, method:str, params:map]"
            )
    elif kind == MsgType.RESPONSE:
        if (
            len(msg) != 4
            or not _is_msgid(msg[1])
            or not (msg[2] is None or isinstance(msg[2], dict))
        ):
            raise ProtocolError(
                ErrorCode.BAD_FRAME, "a response must be [1, msgid:uint32, error:nil|map, result]"
            )
    elif kind == MsgType.NOTIFICATION:
        if len(msg) != 3 or not isinstance(msg[1], str) or not isinstance(msg[2], dict):
            raise ProtocolError(
                ErrorCode.BAD_FRAME, "a notification must be [2, method:str, params:map]"
            )
    else:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"unknown message type {quote(kind)}")
    return msg


def _is_msgid(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFFFFFF


def quote(value: Any, limit: int = Limits.max_echo) -> str:
    """A client's value as quoted in an error message: at most `limit` characters of it, so an
    error never echoes (and never amplifies) a large input. Containers are named, not shown."""
    if isinstance(value, str | bytes):
        cut = value[:limit]
        return repr(cut) + ("..." if len(value) > limit else "")
    if value is None or isinstance(value, bool | int | float):
        return repr(value)[:limit]
    return f"a {type(value).__name__}"


def quoted(names: Iterable[Any], most: int = 5) -> str:
    """Field or parameter names a client sent, as an error message shows them: a few, each cut
    short by `quote`."""
    shown = sorted(quote(n) for n in names)
    more = f" and {len(shown) - most} more" if len(shown) > most else ""
    return ", ".join(shown[:most]) + more
