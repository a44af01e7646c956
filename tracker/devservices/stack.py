"""`tracker up`: the consumer and the API, on local Kafka/PostgreSQL when none is configured.

Starts what is missing (state under ``TRACKER_STATE_DIR``, default .tracker/),
applies migrations, creates the topics, starts both processes exactly as a
user would (`python -m consumer`, `python -m tracker.api`), prints where
everything is, and on Ctrl-C stops everything it started.

The API needs tokens here too (TRACKER_AUTH=on unless the caller sets TRACKER_AUTH): the
stack makes an admin token once, keeps it in the state directory (readable by its owner
only) for the next start, and prints it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tracker.devservices import services as devservices
from tracker.devservices.postgres import create_database
from tracker.devservices.watchdog import Watchdog
from tracker.kafka import client_options
from tracker.migrate import migrate
from tracker.settings import Settings
from tracker.tokens import PREFIX, ensure_admin_token, usable
from tracker.topics import ensure_topics

log = logging.getLogger("tracker.up")


def _command(proc: subprocess.Popen) -> str:
    """What a process we started runs, for a message (its last argument: the module or binary)."""
    args = proc.args
    return str(args[-1]) if isinstance(args, (list, tuple)) else str(args)


def wait_http(url: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{_command(proc)} exited with {proc.returncode} during start-up; its log (path above) says why"
            )
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


class Stack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = Path(settings.state_dir).resolve()
        self.services = contextlib.ExitStack()  # the local Kafka/PostgreSQL started, stopped in reverse
        self.processes: list[subprocess.Popen] = []
        self.admin_token: str | None = None
        # Started first: from here on, nothing we start outlives us (see watchdog.py).
        self.watchdog = Watchdog(self.state / "logs" / "watchdog.log")

    def start_services(self) -> Settings:
        """Start local Kafka/PostgreSQL where none is configured; migrate; create topics."""
        settings = self.settings
        pg = self.services.enter_context(
            devservices.postgres(settings, self.state / "postgres", watchdog=self.watchdog)
        )
        database_url = pg.url  # configured, or the local server's admin URL until we make ours
        if pg.local is not None:
            database_url = asyncio.run(create_database(pg.url, "tracker", if_missing=True))
        settings = dataclasses.replace(settings, database_url=database_url)
        kafka = self.services.enter_context(devservices.kafka(settings, self.state / "kafka", watchdog=self.watchdog))
        bootstrap = kafka.bootstrap_servers
        settings = dataclasses.replace(settings, kafka_bootstrap_servers=bootstrap)
        if kafka.local is not None:
            # The broker we start listens in plain text on loopback; KAFKA_SECURITY_PROTOCOL and
            # the SASL settings are for a broker you configure.
            settings = dataclasses.replace(settings, kafka_security_protocol="PLAINTEXT")
        applied = asyncio.run(migrate(database_url))
        log.info("migrations applied: %s", applied or "none needed")
        asyncio.run(
            ensure_topics(
                bootstrap,
                [settings.topic, settings.dlq_topic],
                settings.topic_partitions,
                max_message_bytes=settings.max_message_bytes,
                client_options=client_options(settings),
            )
        )
        if settings.auth_enabled:
            self.admin_token = asyncio.run(self._admin_token(database_url))
        self.settings = settings
        return settings

    async def _admin_token(self, database_url: str) -> str:
        """The admin token of this state directory: the one kept from a previous start while the
        database still takes it, else a new one."""
        import secrets

        import asyncpg

        path = self.state / "admin-token"
        kept = path.read_text().strip() if path.exists() else ""
        conn = await asyncpg.connect(database_url)
        try:
            if kept and await usable(conn, kept):
                return kept
            token = PREFIX + secrets.token_urlsafe(32)
            await ensure_admin_token(conn, token, "tracker up")
        finally:
            await conn.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(token + "\n")
        return token

    def start_processes(self) -> None:
        env = self.settings.child_environ()
        logs = self.state / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for module, log_name in (("consumer", "consumer.log"), ("tracker.api", "api.log")):
            _say(f"  {module:<12} log: {logs / log_name}")
            handle = open(logs / log_name, "ab")
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", module],
                    env=env,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            self.watchdog.watch_pid(self.processes[-1].pid)
            handle.close()
        s = self.settings
        wait_http(f"http://{s.consumer_host}:{s.consumer_port}/healthz", 60, self.processes[0])
        wait_http(f"http://{s.api_host}:{s.api_port}/healthz", 60, self.processes[1])

    def banner(self) -> str:
        s = self.settings
        api = f"http://{s.api_host}:{s.api_port}"
        send = (
            f"KAFKA_BOOTSTRAP_SERVERS={s.kafka_bootstrap_servers} TRACKER_TOPIC={shlex.quote(s.topic)} "
            f"{Path(sys.executable).parent / 'tracker'} send --trace-id demo-1 --service ingress "
            f"--status received"
        )
        if self.admin_token:
            auth = [
                f"  auth:             on; an admin token (kept in {self.state / 'admin-token'}):",
                f"                    {self.admin_token}",
                "                    more, with scopes and tenants: tracker tokens create --help",
            ]
            look = [
                f"  curl -s -H 'Authorization: Bearer {self.admin_token}' {api}/v1/traces/demo-1",
                f"  (or: TRACKER_API_TOKEN={self.admin_token} tracker status demo-1)",
            ]
        else:
            auth = [
                "  auth:             OFF (TRACKER_AUTH=off): anyone who can reach the API reads and writes every trace"
            ]
            look = [f"  curl -s {api}/v1/traces/demo-1"]
        return "\n".join(
            [
                "",
                "tracker is up.",
                *auth,
                f"  API:              {api}",
                f"  Swagger UI:       {api}/ui/",
                f"  OpenAPI document: {api}/openapi.json",
                f"  consumer metrics: http://{s.consumer_host}:{s.consumer_port}/metrics",
                f"  Kafka:            {s.kafka_bootstrap_servers}  (topic {s.topic}, dead letters {s.dlq_topic})",
                f"  PostgreSQL:       {s.database_url}",
                "",
                "Send a first event:",
                f"  {send}",
                "then look at it:",
                *look,
                "",
                "Ctrl-C stops everything this command started.",
            ]
        )

    def wait(self) -> int:
        """Until Ctrl-C/SIGTERM, or until a process dies (then its exit code)."""
        stop = {"now": False}

        def _stop(signum, frame):
            stop["now"] = True

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _stop)
        while not stop["now"]:
            for proc in self.processes:
                if proc.poll() is not None:
                    _say(f"{_command(proc)} exited with {proc.returncode}; stopping", sys.stderr)
                    return proc.returncode or 1
            time.sleep(0.2)
        return 0

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.services.close()
        self.watchdog.done()


def _say(text: str, stream=None) -> None:
    """Print, but never fail on a closed stdout (`bin/run | tee log` after tee died):
    the launcher must go on to stop what it started."""
    try:
        print(text, file=stream or sys.stdout, flush=True)
    except (BrokenPipeError, OSError):
        pass


def up(settings: Settings) -> int:
    stack = Stack(settings)
    try:
        stack.start_services()
        stack.start_processes()
        _say(stack.banner())
        code = stack.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        # Ctrl-C again while stopping must not cut the clean stop short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _say("stopping ...", sys.stderr)
        stack.stop()
    return code
