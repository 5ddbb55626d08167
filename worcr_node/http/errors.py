"""HTTP API errors: `ApiError` carries a status and an error code; the middleware in `api.py`
renders it (and every other failure it knows) as JSON `{"error": {"code", "message"}}`.
`json_body` reads a request body, turning every way it can be bad into a 400."""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web

from worcr.wire import ErrorCode

__all__ = ["ApiError", "bad_request", "error_response", "json_body"]


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
        raise bad_request(f"{raw[:64]!r} is not a {what} id") from None
