"""Capturing a job's output into its log on the node: logging records and stdout/stderr.

While a handler runs, `current_job` names its `JobContext` (set by the executor in the handler's
task or thread). `JobLogHandler`, installed on the root logger, copies every record emitted
inside a job to that job's log (`ctx.log`); the records still go to the worker's own handlers.
`OutputCapture` replaces `sys.stdout`/`sys.stderr` with streams that copy complete lines written
inside a job to its log as `stdout`/`stderr` lines, and pass everything through to the real
streams. Output from outside any job is untouched.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from worcr.context import JobContext

__all__ = ["JobLogHandler", "OutputCapture", "current_job"]

current_job: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar(
    "worcr_current_job", default=None
)

_LEVELS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}
_MAX_PARTIAL = 64 << 10  # characters of an unfinished line kept before it is sent anyway


def level_name(levelno: int) -> str:
    for threshold in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= threshold:
            return _LEVELS[threshold]
    return "debug"


class JobLogHandler(logging.Handler):
    """Copies records emitted inside a job to the job's log on the node."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        ctx = current_job.get()
        if ctx is None or (record.name.startswith("worcr.") and record.name != "worcr.job"):
            return  # the SDK's own records are about the worker, not the job
        try:
            ctx.log(self.format(record), level_name(record.levelno))
        except Exception:
            self.handleError(record)


class _JobStream:
    """A text stream that copies lines written inside a job to its log, and passes all through."""

    def __init__(self, real: TextIO, level: str) -> None:
        self.real = real
        self.level = level
        self._partial: dict[tuple[str, int], str] = {}  # (job id, token) -> unfinished line
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        ctx = current_job.get()
        if ctx is not None and text:
            self._capture(ctx, text)
        return self.real.write(text)

    def _capture(self, ctx: JobContext, text: str) -> None:
        key = (ctx.id, ctx.token)
        with self._lock:
            buffered = self._partial.pop(key, "") + text
            *lines, rest = buffered.split("\n")
            if len(rest) > _MAX_PARTIAL:
                lines.append(rest)
                rest = ""
            if rest:
                self._partial[key] = rest
        for line in lines:
            ctx.log(line, self.level)

    def end_job(self, ctx: JobContext, send: bool = True) -> None:
        """Send (or drop) what is left of the job's last, unfinished line."""
        with self._lock:
            rest = self._partial.pop((ctx.id, ctx.token), "")
        if rest and send:
            ctx.log(rest, self.level)

    def flush(self) -> None:
        self.real.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno, ...
        return getattr(self.real, name)


class OutputCapture:
    """Install the root handler and the stream copies for as long as the worker runs."""

    def __init__(self, streams: bool = True) -> None:
        self.handler = JobLogHandler()
        self.streams = streams
        self._saved: tuple[TextIO, TextIO] | None = None
        self._stand_in: logging.Handler | None = None

    def install(self) -> None:
        root = logging.getLogger()
        if not root.handlers:
            # With no handler at all, Python prints warnings and errors through its "last
            # resort" handler; adding ours would silence them: keep that behaviour explicitly.
            self._stand_in = logging.StreamHandler(sys.stderr)
            self._stand_in.setLevel(logging.WARNING)
            root.addHandler(self._stand_in)
        root.addHandler(self.handler)
        if self.streams and not isinstance(sys.stdout, _JobStream):
            self._saved = (sys.stdout, sys.stderr)
            sys.stdout = _JobStream(sys.stdout, "stdout")
            sys.stderr = _JobStream(sys.stderr, "stderr")

    def end_job(self, ctx: JobContext, send: bool = True) -> None:
        """The job ended: send its last unfinished lines (or drop them: `send` false)."""
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, _JobStream):
                stream.end_job(ctx, send)

    def uninstall(self) -> None:
        logging.getLogger().removeHandler(self.handler)
        if self._stand_in is not None:
            logging.getLogger().removeHandler(self._stand_in)
            self._stand_in = None
        if self._saved is not None:
            sys.stdout, sys.stderr = self._saved
            self._saved = None
