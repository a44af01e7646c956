"""Nothing `tracker up` starts may outlive it, however it ends.

`tracker up` stops its children itself on Ctrl-C and SIGTERM, but a launcher can
also die without running any code: SIGKILL, a crash, the OOM killer, or a write
to a closed pipe (``bin/run | tee log`` and then Ctrl-C: tee goes first). So at
start it spawns this small process in its own session and keeps the write end of
a pipe to it. The launcher tells it, line by line, what it has started; the
kernel closes the pipe when the launcher dies, for whatever reason. On end of
file without a final ``done`` the watchdog stops everything it was told about:
SIGTERM (PostgreSQL: SIGINT, its fast shutdown), then SIGKILL after a grace period.

PR_SET_PDEATHSIG would cover direct children only; PostgreSQL is daemonised by
pg_ctl and has no parent to watch, hence one process that outlives the launcher
by design and exits as soon as its work is done.

Protocol, one line each: ``pid <pid> <signal>``, ``pidfile <path> <signal>``
(the pid is read at clean-up time: PostgreSQL's postmaster.pid), ``done``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

GRACE_SECONDS = 20.0


class Watchdog:
    """The launcher's side: start the watchdog, tell it what to stop, say ``done`` when clean."""

    def __init__(self, log_file: Path) -> None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tracker.devservices.watchdog"],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: the terminal's Ctrl-C and a closing pipe do not reach it.
                start_new_session=True,
            )

    def _say(self, line: str) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(line.encode() + b"\n")
        self._proc.stdin.flush()

    def watch_pid(self, pid: int, sig: signal.Signals = signal.SIGTERM) -> None:
        self._say(f"pid {pid} {int(sig)}")

    def watch_pidfile(self, path: Path, sig: signal.Signals) -> None:
        self._say(f"pidfile {path} {int(sig)}")

    def done(self) -> None:
        """Everything was stopped by the launcher itself; the watchdog exits without acting."""
        try:
            self._say("done")
            self._proc.stdin.close()  # type: ignore[union-attr]
            self._proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pidfile(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stop_all(targets: list[tuple[int, int]]) -> None:
    for pid, sig in targets:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + GRACE_SECONDS
    while time.monotonic() < deadline and any(_alive(pid) for pid, _ in targets):
        time.sleep(0.2)
    for pid, _ in targets:
        if _alive(pid):
            print(f"watchdog: {pid} still alive after {GRACE_SECONDS:.0f}s, killing it", flush=True)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def main() -> int:
    told: list[tuple[str, str, int]] = []  # (kind, pid or path, signal)
    for raw in sys.stdin.buffer:
        words = raw.decode().split()
        if words == ["done"]:
            return 0
        if len(words) == 3 and words[0] in ("pid", "pidfile"):
            told.append((words[0], words[1], int(words[2])))
    # End of file without "done": the launcher is gone. Stop all it started at once
    # (the consumer and the API exit promptly whether Kafka and PostgreSQL are up or not).
    targets = []
    for kind, what, sig in told:
        pid = int(what) if kind == "pid" else _read_pidfile(what)
        if pid is not None:
            targets.append((pid, sig))
    print(f"watchdog: launcher gone; stopping {[pid for pid, _ in targets]}", flush=True)
    _stop_all(targets)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sys.exit(main())
