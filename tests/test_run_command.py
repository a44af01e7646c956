"""README's run command, from nothing: `tracker up` starts Kafka and PostgreSQL itself,
prints a command that sends a first event, and that event shows up in the API."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tracker.devservices.ports import free_port
from tracker.settings import ENVIRONMENT

ROOT = Path(__file__).resolve().parents[1]


def test_up_from_nothing_prints_a_working_send_command_and_stops_cleanly():
    state = Path(tempfile.mkdtemp(prefix="tracker-up-"))
    state.chmod(0o755)
    api_port, consumer_port = free_port(), free_port()
    ours = {var for var, _ in ENVIRONMENT.values()}
    env = {k: v for k, v in os.environ.items() if k not in ours}  # no Kafka, no database configured
    env.update(TRACKER_STATE_DIR=str(state), TRACKER_API_PORT=str(api_port),
               TRACKER_CONSUMER_PORT=str(consumer_port), TRACKER_API_URL=f"http://127.0.0.1:{api_port}")
    out_path = state / "up.out"
    with open(out_path, "wb") as out:
        up = subprocess.Popen([sys.executable, "-m", "tracker.cli", "up"], env=env, cwd=ROOT, stdout=out,
                              stderr=subprocess.STDOUT)
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

        curl = re.search(r"curl -s (\S+)", banner).group(1)
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(curl, timeout=2) as response:
                    body = json.loads(response.read())
                    break
            except OSError:
                assert time.monotonic() < deadline, "the first event never became visible"
                time.sleep(0.1)
        assert body["trace_id"] == "demo-1" and body["services"][0]["service"] == "ingress"
    finally:
        up.send_signal(signal.SIGINT)
        code = up.wait(90)
        log = out_path.read_text()
        shutil.rmtree(state, ignore_errors=True)
    assert code == 0, log
    # Everything it started is gone: nothing listens on its ports any more.
    for port in (api_port, consumer_port):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            raise AssertionError(f"port {port} still answers after Ctrl-C")
        except OSError:
            pass
    postgres_left = subprocess.run(["pgrep", "-f", f"postgres -D {state}"], capture_output=True)
    kafka_left = subprocess.run(["pgrep", "-f", f"{state}/kafka/server.properties"], capture_output=True)
    assert postgres_left.returncode == 1 and kafka_left.returncode == 1, "a local service outlived `tracker up`"
