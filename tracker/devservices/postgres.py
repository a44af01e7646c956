"""A local PostgreSQL server from the system's binaries, for `bin/run` and tests.

Written here rather than taken from pytest-postgresql because the same code
must serve `bin/run` (not only pytest) and must start the server as the
``postgres`` user when we are root (initdb and postgres refuse root), which
pytest-postgresql's executor does not do.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tracker.devservices.logs import tail
from tracker.devservices.ports import free_port

log = logging.getLogger("tracker.devservices.postgres")


def pg_bindir() -> Path:
    """Where initdb and pg_ctl are: `pg_config --bindir`, else Debian's layout."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
        bindir = Path(out.stdout.strip())
        if (bindir / "initdb").exists():
            return bindir
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    raise RuntimeError("PostgreSQL's server binaries (initdb, pg_ctl) were not found; install postgresql")


class LocalPostgres:
    """One PostgreSQL cluster in ``data_dir``, listening on 127.0.0.1 only."""

    def __init__(self, state_dir: Path, *, durable: bool = True) -> None:
        self.state_dir = Path(state_dir)
        self.data_dir = self.state_dir / "data"
        self.log_file = self.state_dir / "postgres.log"
        self.durable = durable
        self.port: int | None = None
        self._bindir = pg_bindir()
        self._as_postgres = os.geteuid() == 0

    @property
    def url(self) -> str:
        """The admin URL (database ``postgres``); callers create their own databases."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        kwargs: dict[str, Any] = {}
        if self._as_postgres:
            # initdb and postgres refuse to run as root; hand the cluster to `postgres`.
            kwargs = {"user": "postgres", "group": pwd.getpwnam("postgres").pw_gid}
        result = subprocess.run(list(args), capture_output=True, text=True, **kwargs)
        if check and result.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed ({result.returncode}): {result.stdout}{result.stderr}")
        return result

    def _prepare_dirs(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.touch(exist_ok=True)
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            # The postgres user must be able to reach the folder (tmp dirs are 0700).
            os.chmod(self.state_dir, 0o755)
            os.chown(self.state_dir, pw.pw_uid, pw.pw_gid)
            os.chown(self.log_file, pw.pw_uid, pw.pw_gid)
            for parent in self.state_dir.resolve().parents:
                if not os.stat(parent).st_mode & 0o001:
                    raise RuntimeError(
                        f"{parent} is not searchable by others, so the postgres user cannot "
                        f"reach {self.state_dir}; chmod o+x it or choose another folder"
                    )

    def start(self) -> LocalPostgres:
        self._prepare_dirs()
        if not (self.data_dir / "PG_VERSION").exists():
            log.info("initdb %s", self.data_dir)
            args = [
                str(self._bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
            ]
            if not self.durable:
                args.append("--no-sync")
            self._run(*args)
        status = self._run(str(self._bindir / "pg_ctl"), "-D", str(self.data_dir), "status", check=False)
        if status.returncode == 0:
            raise RuntimeError(
                f"a PostgreSQL server already runs on {self.data_dir} (is another `tracker up` "
                f"using {self.state_dir.parent}?); stop it first"
            )
        self.port = free_port()
        self._pg_ctl_start()
        log.info("PostgreSQL ready on 127.0.0.1:%s", self.port)
        return self

    def _pg_ctl_start(self) -> None:
        options = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            "-c unix_socket_directories=''",
            "-c max_connections=200",
        ]
        if not self.durable:
            # Test clusters are thrown away; skipping fsync makes them several times faster.
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        result = self._run(
            str(self._bindir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-o",
            " ".join(options),
            "-w",
            "-t",
            "60",
            "start",
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"PostgreSQL did not start: {result.stdout}{result.stderr}\nlog tail:\n{tail(self.log_file)}"
            )

    def standby(self, state_dir: Path) -> LocalPostgres:
        """A streaming replica of this running cluster in ``state_dir``, started on a port of
        its own: a base backup with ``pg_basebackup -R`` (which writes the standby's
        connection to us), over the loopback replication connection that initdb's default
        pg_hba.conf allows. For the tests of reads from replicas."""
        replica = LocalPostgres(state_dir, durable=self.durable)
        replica._prepare_dirs()
        if not (replica.data_dir / "PG_VERSION").exists():
            args = [
                str(self._bindir / "pg_basebackup"),
                "-D",
                str(replica.data_dir),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ]
            if not self.durable:
                args.append("--no-sync")
            replica._run(*args)
        replica.port = free_port()
        replica._pg_ctl_start()
        return replica

    def start_again(self) -> None:
        """Start a stopped server on the port it had."""
        self._pg_ctl_start()

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run(
                str(self._bindir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "stop",
                check=False,
            )

    def restart(self) -> None:
        """Stop, then start again on the same port (the failure tests use this)."""
        self.stop()
        self.start_again()


def database_url(admin_url: str, name: str) -> str:
    """The URL of database ``name`` on the server of ``admin_url`` (query string kept)."""
    base, _, query = admin_url.partition("?")
    return base.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")


async def create_database(admin_url: str, name: str, *, template: str | None = None, if_missing: bool = False) -> str:
    """Create database ``name`` (a clone of ``template`` if given); return its URL.

    Names are ours (prefix + random hex), never input: identifiers cannot be parameters.
    """
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        exists = if_missing and await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            clone = f' TEMPLATE "{template}"' if template else ""
            await conn.execute(f'CREATE DATABASE "{name}"{clone}')
    finally:
        await conn.close()
    return database_url(admin_url, name)


async def drop_database(admin_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
