"""HTTP API errors: `ApiError` carries a status and an error code; the middleware in `api.py`
renders it (and every other failure it knows) as JSON `{"error": {"code", "message"}}`."""

from __future__ import annotations

from aiohttp import web

__all__ = ["ApiError", "error_response"]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )
