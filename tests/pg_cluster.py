"""A throw-away PostgreSQL cluster for tests and benchmarks: ``initdb`` in a new temporary folder, run by an
unprivileged user (``postgres`` or ``nobody`` when the tests run as root, otherwise the current user),
listening on a free port of 127.0.0.1 only; stopped (``pg_ctl stop -m immediate``) and deleted at the end.

Rules: nothing here touches a server that already runs on the machine; every subprocess has a timeout;
``unavailable()`` says why no cluster can be made (no PostgreSQL binaries, no psycopg), and the pytest
fixtures (``tests/conftest.py``) skip with that reason — or fail when ``CI=true``: CI must never skip them.
``fsync=off`` unless ``durable=True`` (benchmarks): the tests kill clients, never this server, so server-side
durability is not what they check.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SUPERUSER = "kfrouter"
_TIMEOUT_S = 60.0
_names = itertools.count(1)


def bin_dir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are: ``$PG_BINDIR`` when set (and nowhere else then), the PATH, or
    Debian's /usr/lib/postgresql/N/bin (the newest N)."""
    env = os.environ.get("PG_BINDIR")
    if env:
        return Path(env) if (Path(env) / "initdb").is_file() else None
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]), reverse=True
    )
    return Path(candidates[0]).parent if candidates else None


def unavailable() -> str | None:
    """Why no throw-away cluster can be started here, or None."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[dev]')"
    if bin_dir() is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql"
    if os.geteuid() == 0 and _unprivileged_user() is None:
        return "running as root and no unprivileged user (postgres, nobody) to run the cluster as"
    return None


def _unprivileged_user() -> pwd.struct_passwd | None:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """One running throw-away cluster; ``PgCluster.start()``, ``url(dbname)``, ``new_database()``, ``stop()``."""

    def __init__(self, base: Path, port: int, bindir: Path, user: pwd.struct_passwd | None) -> None:
        self.base = base
        self.port = port
        self.bindir = bindir
        self._user = user

    @classmethod
    def start(cls, *, durable: bool = False) -> PgCluster:
        """``durable``: the server's default fsync settings (benchmarks); otherwise fsync is off."""
        reason = unavailable()
        if reason is not None:
            raise RuntimeError(reason)
        bindir = bin_dir()
        assert bindir is not None
        user = _unprivileged_user() if os.geteuid() == 0 else None
        base = Path(tempfile.mkdtemp(prefix="kfr-pg-"))
        if user is not None:
            os.chown(base, user.pw_uid, user.pw_gid)
        base.chmod(0o700)
        cluster = cls(base, 0, bindir, user)
        try:
            cluster._run(
                "initdb",
                "-D",
                str(base / "data"),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            )
            for _attempt in range(3):  # the free port may be taken before the server binds it
                cluster.port = _free_port()
                options = f"-p {cluster.port} -c listen_addresses=127.0.0.1 -k {base} -c max_connections=200"
                if not durable:
                    options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                done = cluster._run(
                    "pg_ctl", "-D", str(base / "data"), "-o", options, "-l", str(base / "log"), "-w", "-t", "30",
                    "start", check=False,
                )  # fmt: skip
                if done.returncode == 0:
                    return cluster
            raise RuntimeError(f"the throw-away PostgreSQL did not start:\n{cluster.log_tail()}")
        except BaseException:
            cluster.stop()
            raise

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if self._user is not None:
            kwargs = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        env = {**os.environ, "LC_ALL": "C"}
        if self._user is not None:
            env["HOME"] = str(self.base)
        done = subprocess.run(
            [str(self.bindir / program), *args],
            cwd=self.base,
            env=env,
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
            check=False,
            **kwargs,  # type: ignore[arg-type]
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{program} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
            )
        return done

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def new_database(self, prefix: str = "t") -> str:
        """A new, empty database; its URL."""
        import psycopg

        name = f"{prefix}_{os.getpid()}_{next(_names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.base / "log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        if (self.base / "data" / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self._run(
                    "pg_ctl", "-D", str(self.base / "data"), "-m", "immediate", "-w", "stop", check=False
                )
        shutil.rmtree(self.base, ignore_errors=True)
