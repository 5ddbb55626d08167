"""HTTP edge: what a request must be before a handler of the API sees it, and the server's log.

`edge_middleware` (added by `build_app`, inside the bearer-token middleware of `api.py`) stands
between aiohttp and the handlers of every request that may change state (any method but GET,
HEAD, OPTIONS):

- a browser page of another origin is refused (`403`): its `Origin` must match `Host`;
- a body must be JSON (`application/json` or `application/*+json`, UTF-8), else `415`: the
  "simple requests" a browser sends cross-site without asking (text/plain, forms) are not JSON;
- a declared `Content-Length` over the body limit is refused (`413`) before a byte is read;
- a large body (over 64 KiB, or of unknown size: chunked or compressed) reserves its size in a
  node-wide `BodyBudget`; when the budget is spent the request gets `503` with `Retry-After`;
- the body is read here, whole, within `BodyLimits.timeout` seconds, else `408` (what was read is
  dropped and the reservation given back). Handlers then read the cached bytes.

`ServerLog` replaces aiohttp's server logger: a malformed request (a request line over 8190
bytes, bad headers) is one INFO line instead of a traceback at ERROR; every other error still
goes to `aiohttp.server` with its traceback. A client gone mid-body is one INFO line from the
middleware.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.log import server_logger
from aiohttp.web_protocol import RequestPayloadError

from worcr.wire import ErrorCode, quote
from worcr_node.http.errors import error_response

__all__ = ["BodyBudget", "BodyLimits", "ServerLog", "edge_middleware"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LARGE_BODY = 64 << 10  # bytes: bodies over this (or of unknown size) count against the budget


@dataclass(frozen=True, slots=True)
class BodyLimits:
    timeout: float = 30.0  # seconds a request body may take to arrive whole
    budget: int = 64 << 20  # bytes of large bodies the node holds at once
    max_body: int = 8 << 20  # bytes of one body


class BodyBudget:
    """Bytes of large request bodies being read or handled now, against a node-wide cap."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0

    def take(self, size: int) -> bool:
        if self.used + size > self.capacity:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used -= size


def edge_middleware(limits: BodyLimits, budget: BodyBudget | None = None) -> Any:
    """The middleware described above; `budget` is shared by every request of the app."""
    budget = budget or BodyBudget(limits.budget)

    @web.middleware
    async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method in SAFE_METHODS:
            return await handler(request)
        refusal = _cross_origin(request) or _body_refusal(request, limits)
        if refusal is not None:
            return refusal
        if not request.body_exists:
            return await handler(request)
        size = _reservation(request, limits.max_body)
        if not budget.take(size):
            log.info("refused a body of %s bytes: %d of %d bytes of large bodies in use",
                     request.content_length or "unknown", budget.used, budget.capacity,
                     extra={"action": "http_body_budget"})  # fmt: skip
            return error_response(503, ErrorCode.UNAVAILABLE,
                                  "too many large request bodies in flight: retry shortly",
                                  headers={"Retry-After": "1"})  # fmt: skip
        try:
            failed = await _read_body(request, limits)  # a Response is falsy: test for None
            return failed if failed is not None else await handler(request)
        finally:
            budget.give(size)

    return edge


def _reservation(request: web.Request, max_body: int) -> int:
    """Bytes a body holds against the budget: 0 if small, else its size (the limit if unknown)."""
    size = request.content_length
    if size is None or hdrs.CONTENT_ENCODING in request.headers:
        return max_body  # chunked, or compressed: its size is known once read
    return size if size > LARGE_BODY else 0


async def _read_body(request: web.Request, limits: BodyLimits) -> web.Response | None:
    """Read the body into the request's cache; an error response if it cannot be had."""
    timeout = limits.timeout
    try:
        async with asyncio.timeout(timeout):
            await request.read()
    except TimeoutError:
        log.info("%s %s from %s: body not received within %g s", request.method, request.path,
                 request.remote, timeout, extra={"action": "http_body_timeout"})  # fmt: skip
        response = error_response(
            408, ErrorCode.BAD_REQUEST, f"request body not received within {timeout:g} s"
        )
        response.force_close()
        return response
    except (ConnectionError, RequestPayloadError, HttpProcessingError) as exc:
        log.info("%s %s from %s: body not received: %s", request.method, request.path,
                 request.remote, _one_line(exc), extra={"action": "http_body_lost"})  # fmt: skip
        response = error_response(400, ErrorCode.BAD_REQUEST, "request body not received whole")
        response.force_close()
        return response
    return None


def _body_refusal(request: web.Request, limits: BodyLimits) -> web.Response | None:
    """413 for a declared size over the limit, 415 for a body that is not UTF-8 JSON."""
    if not request.body_exists:
        return None
    size = request.content_length
    if size is not None and size > limits.max_body:
        return error_response(413, ErrorCode.BAD_REQUEST, f"body over {limits.max_body} bytes")
    if hdrs.CONTENT_TYPE not in request.headers or not _is_json(request.content_type):
        given = quote(request.headers.get(hdrs.CONTENT_TYPE, "none"))
        return error_response(
            415, ErrorCode.BAD_REQUEST, f"content type {given}: a body must be application/json"
        )
    charset = (request.charset or "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        return error_response(
            415, ErrorCode.BAD_REQUEST, f"charset {quote(charset)}: a JSON body must be UTF-8"
        )
    return None


def _is_json(mime: str) -> bool:
    kind, _, subtype = mime.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def _cross_origin(request: web.Request) -> web.Response | None:
    """403 when a browser sends the request from a page of another origin (host and port).

    Browsers send `Origin` with every request that is not a GET or HEAD, and pages cannot forge
    it; curl, the SDK and other programs send none, so they are not affected."""
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None or _same_host(origin, request.host):
        return None
    return error_response(403, ErrorCode.UNAUTHORIZED,
                          f"cross-origin request refused: Origin {quote(origin)} is not "
                          f"{quote(request.host)}; the API takes no requests from other "
                          "sites' pages")  # fmt: skip


def _same_host(origin: str, host: str) -> bool:
    try:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False  # includes "null": sandboxed frames, file:// pages
        default = 443 if parts.scheme == "https" else 80
        ours = urlsplit(f"//{host}")
        same_port = (parts.port or default) == (ours.port or default)
        return parts.hostname == ours.hostname and same_port
    except ValueError:  # a port that is not a number
        return False


def _one_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:200]


class ServerLog:
    """aiohttp's server logger (`AppRunner(logger=...)`): a request the parser refused (a request
    line over 8190 bytes, bad headers or framing) is the client's fault and one INFO line; any
    other exception still goes to `aiohttp.server` at ERROR with its traceback."""

    def debug(self, msg: str, *args: object, **kwargs: Any) -> None:
        server_logger.debug(msg, *args, **kwargs)

    def exception(self, msg: str, *args: object, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info", True)
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(exc, HttpProcessingError):
            log.info("malformed request refused: %s (%s)", _one_line(exc),
                     msg % args if args else msg, extra={"action": "http_bad_request"})  # fmt: skip
            return
        server_logger.exception(msg, *args, **kwargs)
