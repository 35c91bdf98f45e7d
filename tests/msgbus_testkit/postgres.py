"""A real PostgreSQL server that the tests start themselves: never a mock.

`PostgresServer` runs `initdb` and `postgres` from the first place that has them
(`find_binaries`): the directory named by `MSGBUS_TEST_PG_BINDIR`, the PostgreSQL build that the
`pgserver` dev dependency ships, Debian's `/usr/lib/postgresql/<version>/bin` (newest first), or
`pg_ctl`'s directory on PATH. Only the binaries are used, not pgserver's Python server manager.
The server listens on a free loopback port with TCP only (no Unix socket, so no lock file in a
shared folder), trusts every local connection, and keeps `fsync` and `synchronous_commit` on:
durability is part of what the tests check.

    with PostgresServer() as server:          # initdb + start
        dsn = server.create_database()        # postgresql://postgres@127.0.0.1:PORT/t_...
        server.kill()                         # SIGKILL: the next start runs crash recovery
        server.start()
        server.restart()                      # fast shutdown, then start on the same port

The fixtures, for conftests to re-export (`from msgbus_testkit.postgres import ...`):

- `postgres_server`: one server per pytest-xdist worker, started by the first test that asks.
- `postgres_dsn`: a fresh, empty database on it for one test, dropped afterwards.
- `postgres_server_factory`: private servers, for tests that stop, restart or kill theirs.

Without binaries the PostgreSQL tests skip, saying why; under `CI=true` they fail instead
(`require_postgres`), so CI can never pass by running none of them.

PostgreSQL refuses to run as root, so under root `initdb` and `postgres` run as the system user
`postgres` (or `nobody` without one), in a directory that user can reach. Every server lives in
a folder named after the test process that made it. When that process exits, its servers are
killed (atexit); when it is killed, their postmasters get SIGQUIT from the kernel
(PR_SET_PDEATHSIG) and shut down at once; and the first server a process makes sweeps away the
folders and processes that dead test processes left. So a crashed run neither leaves a postgres
running nor blocks the next one.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import importlib.util
import itertools
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from msgbus_server.testing import free_port

BINDIR_ENV = "MSGBUS_TEST_PG_BINDIR"
"""Names a directory holding `initdb` and `postgres`; overrides every other place."""

DEBIAN_BINDIRS = Path("/usr/lib/postgresql")
"""Where Debian's postgresql-<version> packages put their binaries (`<version>/bin`)."""

SUPERUSER = "postgres"
"""The role `initdb` creates and every DSN of these servers connects as (no password)."""

DEFAULT_SETTINGS: Mapping[str, str] = {
    # Many daemons with connection pools, plus the tests' own connections, on one server.
    "max_connections": "200",
    # Small: every pytest-xdist worker runs its own server next to the private ones.
    "shared_buffers": "32MB",
    # Durability is part of what the tests check: never trade it for speed here.
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
}
"""Server settings sized for tests; `PostgresServer(settings=...)` overrides them one by one."""

DEFAULT_STARTUP_TIMEOUT = 60.0
"""Seconds to wait until the server accepts connections (crash recovery on a busy CI box)."""

DEFAULT_STOP_TIMEOUT = 60.0
"""Seconds a fast shutdown may take before the server is killed instead."""

_PORT_ATTEMPTS = 5
"""First starts on a fresh free port, after another process took the one picked before."""

_LOG_TAIL_LINES = 40

_PORT_IN_USE = "Address already in use"
"""How the postmaster's log says the port was taken (it then exits at once)."""

_LOCALE_REFUSED = re.compile(r"locale", re.IGNORECASE)

_DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
"""The database names `create_database` accepts: unquoted identifiers within NAMEDATALEN."""

_PR_SET_PDEATHSIG = 1


class PostgresError(RuntimeError):
    """The server failed to initialise, start or stop; the message carries its log's tail."""


# --- Finding binaries that can run here ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Account:
    """The unprivileged user that runs the server when the tests run as root."""

    name: str
    uid: int
    gid: int


def _server_account() -> _Account | None:
    """Who runs initdb and postgres: None for the current user, a system user under root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return _Account(name, entry.pw_uid, entry.pw_gid)
    raise PostgresError("running as root, and neither a `postgres` nor a `nobody` user exists")


def _as_account(account: _Account | None) -> dict[str, Any]:
    """Popen arguments that run the child as `account` (nothing for the current user)."""
    if account is None:
        return {}
    return {"user": account.uid, "group": account.gid, "extra_groups": []}


def _server_env() -> dict[str, str]:
    """The environment without libpq's PG* variables, which would retarget initdb or postgres."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _bindir_problem(bin_dir: Path, account: _Account | None) -> str | None:
    """None when `initdb` and `postgres` in `bin_dir` run as `account`, else why not."""
    who = f" by user {account.name}" if account else ""
    for tool in ("initdb", "postgres"):
        path = bin_dir / tool
        if not path.is_file():
            return f"{path} does not exist"
        try:
            result = subprocess.run(
                [str(path), "--version"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
                cwd="/",
                env=_server_env(),
                **_as_account(account),
            )
        except (OSError, subprocess.SubprocessError) as error:
            return f"{path} cannot be run{who}: {error}"
        if result.returncode != 0:
            return f"{path} cannot be run{who}: {(result.stderr or result.stdout).strip()}"
    return None


def _candidates() -> list[tuple[str, Path]]:
    """The places to look for binaries, in order of preference, each with where it came from."""
    found: list[tuple[str, Path]] = []
    # find_spec locates the package without importing it: only its binaries are used.
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec("pgserver")
        if spec is not None and spec.origin is not None:
            found.append(("pgserver", Path(spec.origin).parent / "pginstall" / "bin"))
    versions: list[tuple[int, Path]] = []
    with contextlib.suppress(OSError):
        for entry in DEBIAN_BINDIRS.iterdir():
            if entry.name.isdigit() and (entry / "bin").is_dir():
                versions.append((int(entry.name), entry / "bin"))
    found.extend(("Debian", path) for _, path in sorted(versions, reverse=True))
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is not None:
        found.append(("PATH", Path(pg_ctl).resolve().parent))
    return found


@functools.cache
def _locate(bindir_env: str | None) -> tuple[Path | None, str]:
    """The binaries' directory and where it came from, or None and why none can run here."""
    try:
        account = _server_account()
    except PostgresError as error:
        return None, str(error)
    if bindir_env:
        path = Path(bindir_env)
        problem = _bindir_problem(path, account)
        if problem is not None:
            return None, f"{BINDIR_ENV}={bindir_env} is not usable: {problem}"
        return path, BINDIR_ENV
    problems: list[str] = []
    for origin, path in _candidates():
        problem = _bindir_problem(path, account)
        if problem is None:
            return path, origin
        problems.append(f"{origin}: {problem}")
    tried = "; ".join(problems) if problems else "none found"
    return None, (
        f"no PostgreSQL server binaries (set {BINDIR_ENV}, `uv sync` the dev group for "
        f"pgserver, or apt-get install postgresql); tried: {tried}"
    )


def find_binaries() -> Path | None:
    """The directory of `initdb` and `postgres` the tests use, or None when none can run here.

    In order: `$MSGBUS_TEST_PG_BINDIR` (no fallback when it is set), pgserver's bundled build,
    Debian's `/usr/lib/postgresql/<version>/bin` (newest first), then `pg_ctl`'s directory on
    PATH. Under root, a directory counts only if the server's user can run its binaries.
    """
    return _locate(os.environ.get(BINDIR_ENV))[0]


def postgres_unavailable() -> str | None:
    """None when a PostgreSQL server can be started here, else why not."""
    path, why = _locate(os.environ.get(BINDIR_ENV))
    return why if path is None else None


def require_postgres() -> Path:
    """The binaries' directory; skips the calling test without one, or fails it under CI=true."""
    reason = postgres_unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: the PostgreSQL tests must run)")
        pytest.skip(reason)
    path = find_binaries()
    assert path is not None
    return path


# --- Processes: finding, killing and outliving them ------------------------------------------


def _start_ticks(pid: int) -> int | None:
    """When `pid` started (clock ticks after boot), telling it apart from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is parenthesised and may hold spaces: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def cluster_processes(data_dir: Path) -> list[int]:
    """The processes of the cluster in `data_dir`: the postmaster and every backend it forked.

    They are told by their working directory, which the postmaster sets to its data directory
    and its children inherit: backends make themselves session leaders (so no process group
    holds them all), and outlive a killed postmaster as orphans (so no parent does either).
    Zombies have no working directory left, and hold no shared memory.
    """
    target = os.path.realpath(data_dir)
    pids: list[int] = []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/cwd") == target:
                        pids.append(int(entry))
    return pids


def _kill_cluster(data_dir: Path, timeout: float, postmaster: int | None = None) -> None:
    """SIGKILL every process of the cluster in `data_dir`; wait until none runs.

    Until then its shared memory is still in use, and the next postmaster would refuse to
    start. Killing repeats until none is found, so that a backend forked by the postmaster
    just before its death is killed too.
    """
    deadline = time.monotonic() + timeout
    while pids := cluster_processes(data_dir) or ([postmaster] if postmaster else []):
        postmaster = None  # without /proc, the postmaster is all that can be found
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise PostgresError(f"postgres processes {pids} still run {timeout}s after SIGKILL")
        time.sleep(0.01)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _tie_to_parent(parent: int) -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGQUIT when the test process dies, if possible.

    SIGQUIT is the postmaster's immediate shutdown: it takes its backends down with it. The
    kernel sends the signal when the *thread* that forked the child exits, so it is set only for
    children forked on the main thread; the others rely on atexit and the next run's sweep.
    It runs after Popen switched users, since a change of user clears the setting.
    """
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    prctl = _libc().prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGQUIT, 0, 0, 0)
        if os.getppid() != parent:  # the test process died before the call
            os._exit(1)

    return preexec


_ROOT_NAME = f"msgbus-postgres-{os.getuid()}"
_live: dict[int, PostgresServer] = {}
_live_lock = threading.Lock()
_swept = False


def _servers_root() -> Path:
    """The folder of every server this user's tests run, readable by the server's user."""
    root = Path(tempfile.gettempdir()) / _ROOT_NAME
    root.mkdir(mode=0o755, exist_ok=True)
    # The server's user must traverse it under root, whatever umask made it.
    root.chmod(0o755)
    return root


def _owner_alive(folder: Path) -> bool:
    """Whether the process a server folder is named after (`<pid>-<ticks>-...`) still runs."""
    parts = folder.name.split("-")
    if len(parts) < 3 or not (parts[0].isdigit() and parts[1].isdigit()) or parts[1] == "0":
        return True  # not one of ours, or made where start times are unknown: leave it alone
    return _start_ticks(int(parts[0])) == int(parts[1])


def sweep_stale_servers() -> None:
    """Kill the servers and remove the folders that dead test processes left behind.

    The first `PostgresServer` of each process runs it. Folders of live processes stay.
    """
    for folder in _servers_root().iterdir():
        if not folder.is_dir() or _owner_alive(folder):
            continue
        with contextlib.suppress(PostgresError):  # best effort: a new folder is used anyway
            _kill_cluster(folder / "data", timeout=10.0)
        shutil.rmtree(folder, ignore_errors=True)


@atexit.register
def _kill_leftovers() -> None:
    """Kill whatever servers this process still runs, and remove their files."""
    with _live_lock:
        servers = list(_live.values())
    for server in servers:
        with contextlib.suppress(Exception):
            server.kill()
            server.remove_files()


# --- The server -------------------------------------------------------------------------------


class PostgresServer:
    """A PostgreSQL server of its own (initdb'd on first start) on a free loopback port.

    Its files live in a fresh folder under the system temp directory: `data_dir` and
    `log_path` (the postmaster's stdout and stderr, across restarts). `close()` or leaving the
    `with` block stops it and removes them; so does the test process exiting.
    """

    def __init__(
        self,
        bin_dir: Path | None = None,
        *,
        settings: Mapping[str, str] | None = None,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
    ) -> None:
        """Prepare a server; nothing runs until `start()`.

        Args:
            bin_dir: Where `initdb` and `postgres` are; `find_binaries()` when None.
            settings: Server settings (`-c name=value`) over `DEFAULT_SETTINGS`.
            startup_timeout: Seconds `start()` waits until the server accepts connections.
        """
        global _swept
        if bin_dir is None:
            bin_dir = find_binaries()
            if bin_dir is None:
                raise PostgresError(postgres_unavailable() or "no PostgreSQL binaries")
        self._bin_dir = bin_dir
        self._account = _server_account()
        self._settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self._startup_timeout = startup_timeout
        with _live_lock:
            sweep, _swept = not _swept, True
        if sweep:
            sweep_stale_servers()
        # The folder is named after this process, so a sweep knows when it is stale.
        prefix = f"{os.getpid()}-{_start_ticks(os.getpid()) or 0}-"
        self._folder = Path(tempfile.mkdtemp(prefix=prefix, dir=_servers_root()))
        self._folder.chmod(0o755)
        self._data_dir = self._folder / "data"
        self._log_path = self._folder / "postgres.log"
        self._port = free_port()
        self._port_fixed = False  # fixed by the first start: DSNs handed out must stay valid
        self._process: subprocess.Popen[bytes] | None = None
        self._database_names = itertools.count()
        with _live_lock:
            _live[id(self)] = self

    # -- where it is

    @property
    def port(self) -> int:
        """The loopback TCP port; the same across restarts once the server has started."""
        return self._port

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self._data_dir

    @property
    def log_path(self) -> Path:
        """The file the postmaster writes its stdout and stderr to, across restarts."""
        return self._log_path

    @property
    def bin_dir(self) -> Path:
        """The directory of the binaries this server runs."""
        return self._bin_dir

    @property
    def running(self) -> bool:
        """Whether the postmaster runs (it may still be starting or recovering)."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        """The postmaster's process id."""
        if self._process is None:
            raise PostgresError("the server is not running")
        return self._process.pid

    def dsn(self, database: str = "postgres") -> str:
        """`postgresql://postgres@127.0.0.1:PORT/<database>`."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self._port}/{database}"

    def log_text(self) -> str:
        """Everything the postmaster logged so far."""
        try:
            return self._log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _log_tail(self, since: int = 0) -> str:
        try:
            with self._log_path.open("rb") as log:
                log.seek(since)
                text = log.read().decode(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        lines = text.splitlines()[-_LOG_TAIL_LINES:]
        return "\n".join(lines) if lines else "(empty log)"

    # -- life cycle

    def _initdb(self) -> None:
        self._data_dir.mkdir(mode=0o700)
        if self._account is not None:
            os.chown(self._data_dir, self._account.uid, self._account.gid)
        initdb_log = self._folder / "initdb.log"
        base = [
            str(self._bin_dir / "initdb"),
            "-D",
            str(self._data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
        ]
        result: subprocess.CompletedProcess[str] | None = None
        for locale in ("--locale=C.UTF-8", "--no-locale"):
            result = subprocess.run(
                [*base, locale],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
                cwd=self._folder,
                env=_server_env(),
                **_as_account(self._account),
            )
            with initdb_log.open("a") as log:
                log.write(result.stdout + result.stderr)
            if result.returncode == 0:
                return
            if not _LOCALE_REFUSED.search(result.stderr):
                break
            # initdb empties the directory it failed in; try again without a locale.
        assert result is not None
        raise PostgresError(
            f"initdb failed ({result.returncode}) in {self._data_dir}:\n"
            f"{(result.stdout + result.stderr).strip()}"
        )

    def _command(self) -> list[str]:
        argv = [
            str(self._bin_dir / "postgres"),
            "-D",
            str(self._data_dir),
            "-p",
            str(self._port),
            "-c",
            "listen_addresses=127.0.0.1",
            # TCP only: a socket would need a folder the server's user may write, and a lock
            # file there that a killed server leaves behind.
            "-c",
            "unix_socket_directories=",
        ]
        for name, value in self._settings.items():
            argv += ["-c", f"{name}={value}"]
        return argv

    def _launch(self) -> int:
        """Start the postmaster; return where its log output of this start begins."""
        with self._log_path.open("ab") as log:
            since = log.tell()
            self._process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self._folder,
                env=_server_env(),
                # Out of the terminal's process group: a Ctrl-C meant for pytest would otherwise
                # shut the server down under the tests' teardown.
                start_new_session=True,
                preexec_fn=_tie_to_parent(os.getpid()),
                **_as_account(self._account),
            )
        return since

    def _ping(self) -> bool:
        with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=5) as conn:
            return conn.execute("select 1").fetchone() == (1,)

    def _wait_ready(self, since: int) -> bool:
        """True once the server answers; False if it exited because its port was taken."""
        process = self._process
        assert process is not None
        deadline = time.monotonic() + self._startup_timeout
        last_error: Exception | None = None
        while True:
            code = process.poll()
            if code is not None:
                self._kill_orphans()
                if _PORT_IN_USE in self._log_tail(since):
                    return False
                raise PostgresError(
                    f"postgres exited ({code}) while starting on port {self._port}; "
                    f"{self._log_path}:\n{self._log_tail(since)}"
                )
            try:
                if self._ping():
                    return True
            except psycopg.OperationalError as error:  # starting up, or recovering
                last_error = error
            if time.monotonic() > deadline:
                self._kill_process()
                raise PostgresError(
                    f"postgres did not accept connections on port {self._port} within "
                    f"{self._startup_timeout}s (last error: {last_error}); "
                    f"{self._log_path}:\n{self._log_tail(since)}"
                )
            time.sleep(0.02)

    def start(self) -> Self:
        """Initialise the cluster on first use, start the postmaster, wait until it answers.

        After a `kill()` this is where crash recovery runs. The first start retries on another
        port when the one picked was taken meanwhile; later starts keep the port, since DSNs
        were handed out, and retry on it until the startup timeout.
        """
        if self.running:
            raise PostgresError(f"the server on port {self._port} is already running")
        if not (self._data_dir / "PG_VERSION").exists():
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._initdb()
        deadline = time.monotonic() + self._startup_timeout
        for attempt in itertools.count(1):
            if self._wait_ready(self._launch()):
                self._port_fixed = True
                return self
            if self._port_fixed:
                if time.monotonic() > deadline:
                    raise PostgresError(
                        f"port {self._port} stayed in use for {self._startup_timeout}s; "
                        f"{self._log_path}:\n{self._log_tail()}"
                    )
                time.sleep(0.2)
            elif attempt < _PORT_ATTEMPTS:
                self._port = free_port()
            else:
                raise PostgresError(
                    f"every port tried was taken before postgres bound it; "
                    f"{self._log_path}:\n{self._log_tail()}"
                )
        raise AssertionError("unreachable")

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> int:
        """Fast shutdown (SIGINT: sessions are cut, a checkpoint is written); the exit code.

        A server that is not running returns 0. One that takes longer than `timeout` is
        killed, and PostgresError says so.
        """
        process = self._process
        if process is None:
            return 0
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill_process()
            raise PostgresError(
                f"postgres on port {self._port} ignored a fast shutdown for {timeout}s and was "
                f"killed; {self._log_path}:\n{self._log_tail()}"
            ) from None
        self._kill_orphans()
        return code

    def _kill_orphans(self) -> None:
        """After the postmaster exited: kill the backends that outlive it, if any."""
        if self._process is not None:
            _kill_cluster(self._data_dir, timeout=30.0)
            self._process = None

    def _kill_process(self) -> None:
        process = self._process
        if process is not None:
            _kill_cluster(self._data_dir, timeout=30.0, postmaster=process.pid)
            process.wait()
            self._process = None

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend, as a crash would; wait until all are gone.

        The data directory stays as the crash left it: the next `start()` recovers from the WAL.
        """
        self._kill_process()

    def restart(self) -> Self:
        """`stop()` then `start()`, on the same port and data."""
        self.stop()
        return self.start()

    def remove_files(self) -> None:
        """Delete the server's folder (data and logs); only while it is not running."""
        if self.running:
            raise PostgresError("stop the server before removing its files")
        shutil.rmtree(self._folder, ignore_errors=True)
        with _live_lock:
            _live.pop(id(self), None)

    def close(self) -> None:
        """Stop the server (kill it if a fast shutdown fails) and remove its files."""
        try:
            self.stop()
        finally:
            self._kill_process()
            self.remove_files()

    def __enter__(self) -> Self:
        if not self.running:
            try:
                self.start()
            except BaseException:
                self.close()
                raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"pid {self._process.pid}" if self._process is not None else "stopped"
        return f"PostgresServer(port={self._port}, {state}, data_dir={str(self._data_dir)!r})"

    # -- databases

    def connect(self, database: str = "postgres") -> psycopg.Connection[tuple[Any, ...]]:
        """An autocommit connection as the superuser (the caller closes it)."""
        return psycopg.connect(self.dsn(database), autocommit=True, connect_timeout=10)

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its DSN.

        Args:
            name: Its name (lowercase letters, digits and underscores, at most 63); a unique
                `t_<n>_<hex>` when None.
        """
        if name is None:
            name = f"t_{next(self._database_names)}_{uuid.uuid4().hex[:8]}"
        elif not _DATABASE_NAME.fullmatch(name):
            raise ValueError(
                f"database name {name!r}: 1 to 63 lowercase letters, digits or underscores, "
                f"not starting with a digit"
            )
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, closing its sessions first; `name` may be its DSN.

        A database that does not exist is no error.
        """
        if "://" in name:
            name = str(conninfo_to_dict(name)["dbname"])
        with self.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


# --- Fixtures ---------------------------------------------------------------------------------


class PostgresServerFactory(Protocol):
    """Starts a private server; `postgres_server_factory` closes it after the test."""

    def __call__(self, *, settings: Mapping[str, str] | None = None) -> PostgresServer: ...


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One server per pytest-xdist worker, shared by its tests; never stop or kill it.

    Tests share it through `postgres_dsn` (a database each). Tests that restart or kill a
    server take a private one from `postgres_server_factory`.
    """
    bin_dir = require_postgres()
    with PostgresServer(bin_dir) as server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """The DSN of a fresh, empty database for this test, dropped (sessions and all) after it."""
    if not postgres_server.running:
        pytest.fail(
            f"the shared PostgreSQL server ({postgres_server.log_path}) is down: an earlier test "
            "stopped or killed it (tests that do must use postgres_server_factory)"
        )
    dsn = postgres_server.create_database()
    yield dsn
    postgres_server.drop_database(dsn)


@pytest.fixture
def postgres_server_factory() -> Iterator[PostgresServerFactory]:
    """Start private servers (started on return), each closed and removed after the test."""
    bin_dir = require_postgres()
    servers: list[PostgresServer] = []

    def start(*, settings: Mapping[str, str] | None = None) -> PostgresServer:
        server = PostgresServer(bin_dir, settings=settings)
        servers.append(server)
        return server.start()

    yield start
    errors: list[BaseException] = []
    for server in servers:
        try:
            server.close()
        except Exception as error:
            errors.append(error)
    if errors:
        raise errors[0]


def main() -> int:
    """`python -m msgbus_testkit.postgres`: where the tests' server binaries are, or why none."""
    reason = postgres_unavailable()
    if reason:
        print(f"no usable PostgreSQL server: {reason}")
        return 1
    print(f"PostgreSQL server binaries: {find_binaries()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
