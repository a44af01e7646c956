"""README's run command, from nothing: `tracker up` starts Kafka and PostgreSQL itself,
prints a command that sends a first event, and that event shows up in the API."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tracker.devservices.ports import free_port
from tracker.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def _fresh_env(state: Path) -> tuple[dict[str, str], int, int]:
    """Our environment with no Kafka and no database configured, ports and state of its own."""
    api_port, consumer_port = free_port(), free_port()
    ours = Settings.from_env()
    settings = Settings.from_env(
        {},
        state_dir=str(state),
        api_port=api_port,
        consumer_port=consumer_port,
        api_url=f"http://127.0.0.1:{api_port}",
        java_home=ours.java_home,
        cache_home=ours.cache_home,
    )
    env = settings.child_environ()
    assert "TRACKER_AUTH" not in env  # not set, as on a fresh machine: `tracker up` then turns auth on
    return env, api_port, consumer_port


def _listening(port: int) -> bool:
    # A connect, not an HTTP request: a server answering 503 while it stops is still running.
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        children = {child for child, parent in parents.items() if parent in frontier} - found
        found |= children
        frontier = children
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait() is missing


def _started_by(up: subprocess.Popen, state: Path) -> set[int]:
    """Every process `tracker up` started: its descendants and the daemonised postmaster."""
    pids = _descendants(up.pid)
    postmaster = int((state / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
    return pids | {postmaster}


def _kill_leftovers(pids: set[int]) -> None:
    # After a failed assertion: do not leave the orphans to the rest of the suite.
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _wait_for_banner(up: subprocess.Popen, lines: list[str]) -> None:
    assert up.stdout is not None
    for line in up.stdout:
        lines.append(line.decode(errors="replace"))
        if "tracker is up." in lines[-1]:
            return
    raise AssertionError("tracker up ended before its banner:\n" + "".join(lines))


def _survivors(pids: set[int], within: float) -> set[int]:
    deadline = time.monotonic() + within
    while (alive := {pid for pid in pids if _alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.5)
    return alive


def test_up_from_nothing_prints_a_working_send_command_and_stops_cleanly():
    state = Path(tempfile.mkdtemp(prefix="tracker-up-"))
    state.chmod(0o755)
    env, api_port, consumer_port = _fresh_env(state)
    out_path = state / "up.out"
    with open(out_path, "wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "tracker.cli", "up"], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 240
        while "tracker is up." not in out_path.read_text() and time.monotonic() < deadline:
            assert up.poll() is None, out_path.read_text()
            time.sleep(0.2)
        banner = out_path.read_text()
        assert f"http://127.0.0.1:{api_port}/ui/" in banner
        send_line = next(line.strip() for line in banner.splitlines() if " send --trace-id demo-1 " in line)
        sent = subprocess.run(send_line, shell=True, capture_output=True, text=True, env=env, timeout=60)
        assert sent.returncode == 0, sent.stderr

        # Auth is on: the banner's curl carries the admin token it made, kept for the next start.
        shown = re.search(r"curl -s -H 'Authorization: Bearer (trk_\S+)' (\S+)", banner)
        assert shown, banner
        token, curl = shown.groups()
        assert (state / "admin-token").read_text().strip() == token
        assert (state / "admin-token").stat().st_mode & 0o077 == 0
        deadline = time.monotonic() + 20
        while True:
            try:
                request = urllib.request.Request(curl, headers={"Authorization": f"Bearer {token}"})
                with urllib.request.urlopen(request, timeout=2) as response:
                    body = json.loads(response.read())
                    break
            except OSError:
                assert time.monotonic() < deadline, "the first event never became visible"
                time.sleep(0.1)
        assert body["trace_id"] == "demo-1" and body["services"][0]["service"] == "ingress"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(curl, timeout=2)
        assert refused.value.code == 401
    finally:
        up.send_signal(signal.SIGINT)
        code = up.wait(90)
        log = out_path.read_text()
        shutil.rmtree(state, ignore_errors=True)
    assert code == 0, log
    # Everything it started is gone: nothing listens on its ports any more.
    for port in (api_port, consumer_port):
        assert not _listening(port), f"port {port} still open after Ctrl-C"
    postgres_left = subprocess.run(["pgrep", "-f", f"postgres -D {state}"], capture_output=True)
    kafka_left = subprocess.run(["pgrep", "-f", f"{state}/kafka/server.properties"], capture_output=True)
    assert postgres_left.returncode == 1 and kafka_left.returncode == 1, "a local service outlived `tracker up`"


def _run_command_up(env: dict[str, str]) -> subprocess.Popen:
    """README's run command, its stdout a pipe, in a process group of its own like a terminal job."""
    return subprocess.Popen(
        ["bin/run"], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )


@contextlib.contextmanager
def _up_from_nothing():
    """README's run command from nothing, up to its banner: (process, every pid it started,
    its API and consumer ports). Whatever the test leaves running is killed afterwards."""
    state = Path(tempfile.mkdtemp(prefix="tracker-up-"))
    state.chmod(0o755)
    env, api_port, consumer_port = _fresh_env(state)
    up = _run_command_up(env)
    started: set[int] = set()
    try:
        _wait_for_banner(up, [])
        started |= _started_by(up, state)
        assert len(started) >= 4, started  # Kafka, PostgreSQL, consumer, API (and the watchdog)
        yield up, started, (api_port, consumer_port)
    finally:
        if up.poll() is None:
            up.kill()
        up.wait()
        _kill_leftovers(started)
        shutil.rmtree(state, ignore_errors=True)


def test_ctrl_c_after_its_stdout_pipe_closed_leaves_nothing_it_started_running():
    # `bin/run | tee run.log`, then Ctrl-C: tee is gone first, so every later write fails.
    with _up_from_nothing() as (up, started, ports):
        up.stdout.close()
        os.killpg(up.pid, signal.SIGINT)
        left = _survivors(started | {up.pid}, within=30)
        assert not left, f"still running 30 s after Ctrl-C: {left}"
        assert not any(_listening(port) for port in ports)


def test_a_killed_launcher_leaves_nothing_it_started_running():
    with _up_from_nothing() as (up, started, ports):
        up.kill()  # SIGKILL: no handler, no finally, nothing of ours runs
        up.wait()
        left = _survivors(started, within=30)
        assert not left, f"still running 30 s after the launcher was killed: {left}"
        assert not any(_listening(port) for port in ports)


def test_a_user_without_root_is_told_the_one_command_that_installs_what_is_missing(tmp_path):
    # A PATH with bash, python and coreutils but no java, mvn or prometheus.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("bash", "ls", "cat"):
        (bindir / tool).symlink_to(shutil.which(tool))
    (bindir / "python3").symlink_to("/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable)
    # The script's text as an argument: the test's folders need not be readable by nobody.
    script = (ROOT / "bin" / "_system").read_text() + "\nneed_system_packages test\n"
    result = subprocess.run(
        [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "nobody", "--", "/bin/bash", "-c", script],
        capture_output=True,
        text=True,
        env={"PATH": str(bindir)},
        cwd="/",
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "sudo apt-get install -y openjdk-17-jre-headless maven" in result.stderr
    assert "prometheus" in result.stderr
