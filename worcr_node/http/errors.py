"""HTTP API errors: `ApiError` carries a status and an error code; the middleware in `api.py`
renders it (and every other failure it knows) as JSON `{"error": {"code", "message"}}`.
`json_body` reads a request body, `path_id`, `query_int`, `query_text` and `refuse_unknown` read
the route and query, each turning every way they can be bad into a 400 whose message quotes at
most a short prefix of what the client sent (`worcr.wire.quote`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from worcr.wire import ErrorCode, quote, quoted

__all__ = [
    "ApiError",
    "bad_request",
    "error_response",
    "json_body",
    "path_id",
    "query_int",
    "query_one",
    "query_text",
    "refuse_unknown",
    "text_ok",
]


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}  # more fields of the error object (e.g. line, column)


def bad_request(message: str) -> ApiError:
    """400 BAD_REQUEST; the message names the field."""
    return ApiError(400, ErrorCode.BAD_REQUEST, message)


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message, **(details or {})}},
        status=status,
        headers=headers,
    )


async def json_body(request: web.Request) -> Any:
    """The request's JSON body; ApiError 400 if it is not JSON Python can hold."""
    why = "body is not valid JSON"
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    except ValueError:  # an integer literal over Python's 4300 digits
        why += ": a number has too many digits"
    except RecursionError:
        why += ": nested too deeply"
    raise bad_request(why)


def path_id(request: web.Request, what: str = "job") -> uuid.UUID:
    """The UUID in the route's `{id}` (a job's, a rule's: `what`); a 400 if it is not one."""
    raw = request.match_info["id"]
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise bad_request(f"{quote(raw)} is not a {what} id") from None


def query_one(request: web.Request, name: str) -> str | None:
    """A query parameter given at most once; a 400 if it is repeated."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise bad_request(f"{name}: give it once")
    return values[0] if values else None


def query_int(request: web.Request, name: str, low: int, high: int) -> int | None:
    """An integer query parameter in [low, high] (ASCII digits), or None; a 400 otherwise."""
    raw = query_one(request, name)
    if raw is None:
        return None
    value = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 19 else None
    if value is None or not low <= value <= high:
        raise bad_request(f"{name}: expected an integer from {low} to {high}, got {quote(raw)}")
    return value


def text_ok(value: str, max_len: int) -> bool:
    """1 to `max_len` printable characters, as a job's kind, tenant and tags are: no control
    character (NUL included) and no unpaired surrogate, which PostgreSQL text cannot hold."""
    return 0 < len(value) <= max_len and value.isprintable()


def query_text(request: web.Request, name: str, max_len: int) -> str | None:
    """A text query parameter (given at most once) that `text_ok` accepts, or None; a 400
    naming it otherwise."""
    value = query_one(request, name)
    if value is not None and not text_ok(value, max_len):
        raise bad_request(f"{name}: expected 1 to {max_len} printable characters")
    return value


def refuse_unknown(request: web.Request, allowed: Iterable[str]) -> None:
    """A 400 naming (a few of) the query parameters that are not in `allowed`."""
    unknown = set(request.query) - set(allowed)
    if unknown:
        raise bad_request(f"unknown parameter(s) {quoted(unknown)}; allowed: {sorted(allowed)}")
