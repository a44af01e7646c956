"""The consumer and the API as real processes, started the way users start them."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tracker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


class Process:
    """One child process with its log file; stop/kill/wait helpers for the tests."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> Process:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait: the clean shutdown path."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: the crash path."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_http(self, url: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                if not self.alive:
                    code = self.proc.returncode if self.proc is not None else "nothing (never started)"
                    raise AssertionError(f"{self.name} exited with {code}:\n{self.log()[-4000:]}")
                try:
                    async with session.get(url) as response:
                        if response.status == 200:
                            return
                except (TimeoutError, aiohttp.ClientError, OSError):
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"{self.name} did not answer {url} within {timeout}s:\n{self.log()[-4000:]}")


class Launcher:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Process] = []

    async def consumer(self, settings: Settings, name: str = "consumer", wait: bool = True) -> Process:
        proc = Process(
            name, [sys.executable, "-m", "consumer"], settings.child_environ(), self.tmp_path / f"{name}.log"
        ).start()
        self.started.append(proc)
        if wait:
            await proc.wait_http(f"http://{settings.consumer_host}:{settings.consumer_port}/healthz")
        return proc

    async def api(self, settings: Settings, name: str = "api") -> Process:
        proc = Process(
            name, [sys.executable, "-m", "tracker.api"], settings.child_environ(), self.tmp_path / f"{name}.log"
        ).start()
        self.started.append(proc)
        await proc.wait_http(f"{settings.api_url}/healthz")
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.alive:
                try:
                    proc.terminate(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


@pytest.fixture
def launch(tmp_path):
    """Start consumer/API processes; all are stopped at the end of the test."""
    launcher = Launcher(tmp_path)
    yield launcher
    launcher.stop_all()
