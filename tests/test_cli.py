"""The `tracker` command as people use it in a terminal: watching an upload from the
moment it is sent, untrusted text that must not drive the terminal, bad usage."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from tests.helpers.api import wait_for_trace
from tests.helpers.factories import encode, payload_tracker
from tests.helpers.ingest import produce, wait_stored
from tests.helpers.kafka import read_all
from tracker.cli import main
from tracker.cli.exits import EXIT_USAGE
from tracker.cli.render import printable


def cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tracker.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


async def test_watch_waits_for_a_trace_whose_first_event_is_not_stored_yet(settings, launch, kafka_bootstrap):
    await launch.consumer(settings)
    await launch.api(settings)
    # Started before anything is sent: the Status API's flow (upload, get the id, watch).
    watch = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tracker.cli",
        "status",
        "late-1",
        "--watch",
        "--interval",
        "0.2",
        "--wait",
        "60",
        env=settings.child_environ(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await asyncio.sleep(2)
    assert watch.returncode is None, "--watch gave up before the first event"
    now = datetime.now(UTC)
    await produce(
        kafka_bootstrap,
        settings.topic,
        [
            (b"late-1", encode(payload_tracker("late-1", "ingress", "received", now))),
        ],
    )
    await wait_for_trace(settings.api_url, "late-1", 1)
    await asyncio.sleep(0.5)
    assert watch.returncode is None, "--watch stopped before the trace was done"
    await produce(
        kafka_bootstrap,
        settings.topic,
        [
            (
                b"late-1",
                encode(
                    {
                        "trace_id": "late-1",
                        "service": "ingress",
                        "status": "success",
                        "timestamp": (now + timedelta(seconds=1)).isoformat(),
                        "trace_status": "FINISHED",
                    }
                ),
            ),
        ],
    )
    stdout, stderr = await asyncio.wait_for(watch.communicate(), timeout=30)
    assert watch.returncode == 0, stderr
    assert "no event yet" in stdout.decode() and "in_progress" in stdout.decode()


async def test_watch_gives_up_with_exit_4_after_wait(settings, launch):
    await launch.api(settings)
    result = await asyncio.to_thread(
        cli, "status", "never-sent", "--watch", "--interval", "0.2", "--wait", "1", env=settings.child_environ()
    )
    assert result.returncode == 4
    assert "--wait 1s" in result.stderr


def test_printable_escapes_every_control_character_and_keeps_other_text():
    assert printable("disk\x1b[31mfull\nline2\ttab\x7f\x9b") == "disk\\x1b[31mfull\\nline2\\ttab\\x7f\\x9b"
    assert printable("Ærlig talt — ok") == "Ærlig talt — ok"


async def test_control_characters_in_events_never_reach_the_terminal_raw(settings, launch, db, kafka_bootstrap):
    await launch.consumer(settings)
    await launch.api(settings)
    now = datetime.now(UTC)
    hostile = "disk full\x1b]0;owned\x07\nFAKE ROW"
    messages = [
        # Identifiers with control characters are refused (dead-lettered) ...
        (b"t", encode(payload_tracker("ctl-1", "bad\nservice", "received", now))),
        (b"t", encode(payload_tracker("ctl-1", "esc\x1b[2J", "received", now))),
        # ... free text may carry them, and is escaped when shown.
        (
            b"t",
            encode(
                {
                    "trace_id": "ctl-1",
                    "service": "copy",
                    "status": "error",
                    "message": hostile,
                    "timestamp": now.isoformat(),
                }
            ),
        ),
    ]
    await produce(kafka_bootstrap, settings.topic, messages)
    await wait_stored(db, 1, timeout=60)
    dead = await read_all(kafka_bootstrap, settings.dlq_topic, 2)
    assert sorted(dict(r.headers)["tracker.reason"] for r in dead) == [b"invalid_value", b"invalid_value"]
    assert all(b"control character" in dict(r.headers)["tracker.detail"] for r in dead)

    env = settings.child_environ()
    for args in (["status", "ctl-1", "--history"], ["services"]):
        shown = await asyncio.to_thread(cli, *args, env=env)
        assert shown.returncode in (0, 1), shown.stderr
        assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
        assert "FAKE ROW" not in "".join(line for line in shown.stdout.splitlines() if line.startswith("FAKE"))
    status = await asyncio.to_thread(cli, "status", "ctl-1", "--history", env=env)
    assert "disk full\\x1b]0;owned\\x07\\nFAKE ROW" in status.stdout
    services = await asyncio.to_thread(cli, "services", env=env)
    assert [line.split()[0] for line in services.stdout.splitlines()[1:]] == ["copy"]


def test_send_with_a_body_that_is_not_json_exits_2_with_one_line(settings):
    result = cli(
        "send",
        "--trace-id",
        "b-1",
        "--service",
        "s",
        "--status",
        "received",
        "--body",
        "{bad",
        env=settings.child_environ(),
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "--body is not JSON" in result.stderr


def test_up_refuses_fewer_than_one_consumer_or_api_worker(capsys):
    # Refused before anything starts: no service, no process.
    for flag in ("--consumers", "--api-workers"):
        assert main(["up", flag, "0"]) == EXIT_USAGE
        assert f"{flag} must be at least 1, got 0" in capsys.readouterr().err
