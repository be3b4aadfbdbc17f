"""A throw-away PostgreSQL server for the tests (see docs/testing.md).

:meth:`PostgresServer.start` runs ``initdb`` into a temporary directory and ``pg_ctl start`` on a
free loopback port, with durability switched off, so the whole thing takes a second or two.
:meth:`PostgresServer.new_database` then gives each test its own empty database.
:meth:`PostgresServer.stop` stops the server and deletes the directory.

The server binaries are looked for in ``$WARNSVC_PG_BINDIR``, then ``pg_config --bindir``, then the
highest ``/usr/lib/postgresql/*/bin``, then ``PATH`` (``scripts/ensure-postgres`` installs them).
PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user, or as a
``warnsvc-pg`` system user made for it.

With ``WARNSVC_TEST_PG_URL`` set, :meth:`PostgresServer.for_tests` uses that server instead of
starting one; its user needs CREATEDB.

A server that cannot start raises :class:`PostgresError` with the tail of its log: the tests
that need it then fail, they are never skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import asyncpg
from sqlalchemy.engine import URL, make_url

ENV_BINDIR = "WARNSVC_PG_BINDIR"
ENV_URL = "WARNSVC_TEST_PG_URL"
SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
USER = "warnsvc"
DATABASE = "warnsvc"
SYSTEM_USER = "warnsvc-pg"
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_T = TypeVar("_T")


class PostgresError(RuntimeError):
    """The throw-away server could not be found, started or used."""


def find_bindir() -> Path:
    """The directory holding initdb, pg_ctl and postgres (order as in scripts/ensure-postgres)."""
    override = os.environ.get(ENV_BINDIR)
    if override:
        if _has_server_binaries(Path(override)):
            return Path(override)
        raise PostgresError(f"{ENV_BINDIR}={override} lacks one of {', '.join(SERVER_BINARIES)}")
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    candidates.extend(
        sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    )
    for candidate in candidates:
        if _has_server_binaries(candidate):
            return candidate
    found = [shutil.which(name) for name in SERVER_BINARIES]
    if all(found):
        # Resolve symlinks so the three come from one installation.
        return Path(os.path.realpath(str(found[0]))).parent
    raise PostgresError(
        "PostgreSQL server binaries not found (initdb, pg_ctl, postgres): run "
        f"scripts/ensure-postgres, or set {ENV_BINDIR} or {ENV_URL} (docs/testing.md)"
    )


def asyncpg_dsn(url: str) -> str:
    """A SQLAlchemy ``postgresql+asyncpg://`` URL as a DSN for ``asyncpg.connect``."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class _RunAs:
    """Who runs initdb and pg_ctl: this process's user, or (as root) an unprivileged one."""

    name: str | None = None
    uid: int = -1
    gid: int = -1

    def command(self, args: Sequence[str]) -> list[str]:
        if self.name is None:
            return list(args)
        if shutil.which("runuser"):
            return ["runuser", "-u", self.name, "--", *args]
        if shutil.which("setpriv"):
            return [
                "setpriv",
                f"--reuid={self.uid}",
                f"--regid={self.gid}",
                "--init-groups",
                "--",
                *args,
            ]
        raise PostgresError("running as root, but neither runuser nor setpriv is installed")

    def own(self, path: Path) -> None:
        if self.name is not None:
            os.chown(path, self.uid, self.gid)


class PostgresServer:
    """A PostgreSQL server the tests may create and drop databases on.

    ``url`` is the SQLAlchemy URL of its main database, e.g.
    ``postgresql+asyncpg://warnsvc@127.0.0.1:PORT/warnsvc``.
    """

    def __init__(self, url: str, *, base_dir: Path | None = None, bindir: Path | None = None):
        self.url = url
        self._url: URL = make_url(url)
        self.base_dir = base_dir
        self.bindir = bindir
        self._run_as = _RunAs()
        self._owned = base_dir is not None
        self._version_num = 0
        self._options: list[str] = []

    # -- starting and stopping ---------------------------------------------------------------

    @classmethod
    def for_tests(cls) -> PostgresServer:
        """The server for this test run: ``$WARNSVC_TEST_PG_URL`` if set, else a throw-away one."""
        external = os.environ.get(ENV_URL)
        if external:
            return cls.external(external)
        return cls.start()

    @classmethod
    def external(cls, url: str) -> PostgresServer:
        """A server someone else runs; only the databases made here are dropped."""
        parsed = make_url(url)
        if parsed.get_backend_name() not in ("postgresql", "postgres"):
            raise PostgresError(f"{ENV_URL} is not a PostgreSQL URL: {parsed!r}")
        parsed = parsed.set(drivername="postgresql+asyncpg")
        server = cls(parsed.render_as_string(hide_password=False))
        server._check()
        return server

    @classmethod
    def start(
        cls, *, bindir: Path | None = None, server_options: Sequence[str] = ()
    ) -> PostgresServer:
        """initdb into a new temporary directory and start a server on a free loopback port.

        ``server_options`` are extra ``-c name=value`` settings for ``postgres``.
        """
        bindir = bindir or find_bindir()
        base = Path(tempfile.mkdtemp(prefix="warnsvc-pg-"))
        server = cls(
            URL.create("postgresql+asyncpg", username=USER, host="127.0.0.1").render_as_string(),
            base_dir=base,
            bindir=bindir,
        )
        try:
            server._run_as = _unprivileged_user() if os.geteuid() == 0 else _RunAs()
            server._initdb()
            server._start(server_options)
            server._check()
            server._execute(f'CREATE DATABASE "{DATABASE}"')
        except BaseException:
            server.stop()
            raise
        return server

    def stop(self) -> None:
        """Stop a throw-away server and delete its directory; idempotent."""
        if not self._owned or self.base_dir is None:
            return
        data = self.base_dir / "data"
        if (data / "postmaster.pid").exists() and self.bindir is not None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._run([self._bin("pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w"])
            if (data / "postmaster.pid").exists():
                with contextlib.suppress(subprocess.SubprocessError, OSError):
                    self._run([self._bin("pg_ctl"), "stop", "-D", str(data), "-m", "immediate"])
        shutil.rmtree(self.base_dir, ignore_errors=True)
        self.base_dir = None

    def pause(self) -> None:
        """Stop a throw-away server, keeping its data: the database goes away."""
        assert self._owned and self.base_dir is not None, "only a server started here pauses"
        self._run([self._bin("pg_ctl"), "stop", "-D", str(self.base_dir / "data"), "-m", "fast"])

    def resume(self) -> None:
        """Start a paused server again on the same port: the database comes back."""
        assert self._owned and self.base_dir is not None, "only a server started here resumes"
        self._start(self._options, attempts=1, fixed_port=self.port)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- databases ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._url.port or 5432

    def url_for(self, database: str) -> str:
        """The SQLAlchemy URL of another database on this server."""
        return self._url.set(database=database).render_as_string(hide_password=False)

    def new_database(self, name: str) -> str:
        """Create an empty database (a copy of template0) and return its URL.

        ``name`` is lower-case letters, digits and underscores, at most 63 of them.
        """
        _check_name(name)
        self._execute(f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8'")
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database made by :meth:`new_database`, closing any connections still open."""
        _check_name(name)
        force = " WITH (FORCE)" if self._version_num >= 130000 else ""
        self._execute(f'DROP DATABASE IF EXISTS "{name}"{force}')

    # -- internals ---------------------------------------------------------------------------

    def _bin(self, name: str) -> str:
        assert self.bindir is not None
        return str(self.bindir / name)

    def _run(self, args: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        assert self.base_dir is not None
        return subprocess.run(
            self._run_as.command(args),
            cwd=self.base_dir,  # the run-as user may not be able to enter ours
            env={**os.environ, "LC_ALL": "C"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )

    def _initdb(self) -> None:
        assert self.base_dir is not None
        self._run_as.own(self.base_dir)
        if self._run_as.name is not None:
            probe = subprocess.run(
                self._run_as.command(["test", "-w", str(self.base_dir)]),
                cwd="/",
                check=False,
            )
            if probe.returncode != 0:
                raise PostgresError(
                    f"user {self._run_as.name} cannot write to {self.base_dir}: "
                    "point TMPDIR at a directory every user can enter"
                )
        args = [
            self._bin("initdb"),
            "-D",
            str(self.base_dir / "data"),
            "--auth=trust",
            "-U",
            USER,
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        ]
        try:
            self._run(args)
        except subprocess.CalledProcessError as exc:
            raise PostgresError(f"initdb failed:\n{_tail(exc.stdout + exc.stderr)}") from None

    def _start(
        self, server_options: Sequence[str], attempts: int = 3, fixed_port: int | None = None
    ) -> None:
        assert self.base_dir is not None
        data = self.base_dir / "data"
        log = self.base_dir / "server.log"
        self._options = list(server_options)
        for attempt in range(1, attempts + 1):
            port = fixed_port or free_port()
            options = [
                "-c listen_addresses=127.0.0.1",
                f"-p {port}",
                "-c " + shlex.quote(f"unix_socket_directories={data}"),
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=200",
                *(f"-c {option}" for option in server_options),
            ]
            args = [self._bin("pg_ctl"), "start", "-w", "-t", "60", "-D", str(data)]
            args += ["-l", str(log), "-o", " ".join(options)]
            try:
                self._run(args)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                text = _read(log)
                if "could not bind" in text and attempt < attempts:
                    continue  # someone took the port between free_port() and the bind
                output = exc.stdout if isinstance(exc.stdout, str) else ""
                raise PostgresError(
                    f"PostgreSQL did not start (pg_ctl: {output.strip() or exc}); "
                    f"tail of {log}:\n{_tail(text)}"
                ) from None
            self._url = self._url.set(port=port, database=DATABASE)
            self.url = self._url.render_as_string(hide_password=False)
            return

    def _check(self) -> None:
        """Connect once, so a wrong URL fails here; learn the server version."""

        async def version(conn: asyncpg.Connection) -> int:
            return int(await conn.fetchval("SHOW server_version_num"))

        try:
            self._version_num = self._with_connection(version)
        except (OSError, asyncpg.PostgresError) as exc:
            log = "" if self.base_dir is None else _tail(_read(self.base_dir / "server.log"))
            raise PostgresError(f"cannot connect to {self._url!r}: {exc}\n{log}") from None

    def _execute(self, statement: str) -> None:
        async def run(conn: asyncpg.Connection) -> None:
            await conn.execute(statement)

        self._with_connection(run)

    def _with_connection(self, work: Callable[[asyncpg.Connection], Awaitable[_T]]) -> _T:
        """Run ``work`` on a fresh connection, in a thread with its own event loop.

        Fixtures call this synchronously, maybe while pytest-asyncio owns this thread's loop.
        Maintenance statements go to the ``postgres`` database of a throw-away server, so the
        main one can be dropped or used as a template; on an external server, to its URL's.
        """
        database = "postgres" if self._owned else self._url.database
        dsn = asyncpg_dsn(self._url.set(database=database).render_as_string(hide_password=False))

        async def session() -> _T:
            conn = await asyncpg.connect(dsn, timeout=30)
            try:
                return await work(conn)
            finally:
                await conn.close()

        result: list[_T] = []
        error: list[BaseException] = []

        def target() -> None:
            try:
                result.append(asyncio.run(session()))
            except BaseException as exc:
                error.append(exc)

        thread = threading.Thread(target=target, name="pgserver")
        thread.start()
        thread.join()
        if error:
            raise error[0]
        return result[0]


def _unprivileged_user() -> _RunAs:
    """As root: the ``postgres`` user if it exists, else a ``warnsvc-pg`` system user."""
    for name in ("postgres", SYSTEM_USER):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return _RunAs(name, entry.pw_uid, entry.pw_gid)
    made = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        entry = pwd.getpwnam(SYSTEM_USER)  # made now, or by a concurrent run
    except KeyError:
        raise PostgresError(
            f"running as root and could not create user {SYSTEM_USER}: {made.stderr.strip()}"
        ) from None
    return _RunAs(SYSTEM_USER, entry.pw_uid, entry.pw_gid)


def _has_server_binaries(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in SERVER_BINARIES)


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(f"database name must match {_NAME.pattern}: {name!r}")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
