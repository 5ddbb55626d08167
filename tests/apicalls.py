"""HTTP API test helpers: a call that returns (status, JSON), and the error-shape check."""

from __future__ import annotations

from typing import Any

import aiohttp


async def call(
    http: aiohttp.ClientSession, method: str, path: str, body: Any = None, data: str | None = None
) -> tuple[int, Any]:
    """(status, JSON body or None when there is no body); `data` is sent as application/json."""
    kwargs: dict[str, Any] = {"json": body}
    if data is not None:
        kwargs = {"data": data, "headers": {"Content-Type": "application/json"}}
    async with http.request(method, path, **kwargs) as resp:
        return resp.status, (await resp.json() if await resp.read() else None)


def assert_error(status: int, body: Any, want: int, code: str, *words: str) -> None:
    """An error answer: the status, `{"error": {"code", "message"}}`, the message names words."""
    assert status == want, body
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    message = body["error"]["message"]
    assert isinstance(message, str)
    assert message
    for word in words:
        assert word in message, (word, message)
