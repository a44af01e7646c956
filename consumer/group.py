"""Several consumer processes under one command: TRACKER_CONSUMER_PROCESSES=N.

Why processes: one Python process validates, folds and encodes on one core, and on
bench/ingest's machine that core, not PostgreSQL, is what limits the ingest rate. Kafka's
unit of parallelism is the partition, so N members of the same consumer group split the
topic's partitions and use N cores; each member is the ordinary single-process consumer
(its own connections, its own ordered write-then-commit per partition), so everything the
failure tests prove of one consumer holds for each member.

This process is only the parent:
- it forks the members after the imports, so their code and modules start out shared;
- it serves the public port (TRACKER_CONSUMER_PORT): /metrics is every member's metrics,
  each series labelled ``process`` (0..N-1, bounded); /healthz and /readyz answer 200 only
  when every member's does. The members listen on loopback ports of their own;
- a member that exits ends the group: the parent stops the others and exits non-zero, so
  that the outer supervisor restarts the whole (as it restarts one consumer); Kafka
  redelivers what was not committed;
- a parent killed outright (SIGKILL, OOM) takes its members with it: each member asks the
  kernel for SIGTERM when its parent dies (PR_SET_PDEATHSIG), and stops cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import sys

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from tracker.devservices.ports import free_port
from tracker.settings import Settings

log = logging.getLogger("tracker.consumer")

_PR_SET_PDEATHSIG = 1
STOP_GRACE_SECONDS = 60.0


@dataclasses.dataclass
class Member:
    index: int
    pid: int
    url: str
    exit_code: int | None = None


def _die_with_parent(parent: int) -> None:
    """SIGTERM this process when its parent dies, however it dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the parent's own SIGTERM handling still applies
        pass
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def run_group(settings: Settings, serve) -> int:
    """Fork ``settings.consumer_processes`` members, each running ``serve(member_settings)``
    (which returns an exit code), and supervise them; returns the group's exit code."""
    parent = os.getpid()
    members: list[Member] = []
    for index in range(settings.consumer_processes):
        port = free_port()
        member = dataclasses.replace(
            settings,
            consumer_processes=1,
            # TRACKER_CONSUMER_WRITERS counts the command's concurrent writes, whatever its
            # processes: each member holds its share. Two members of two writers each held four
            # batches in flight where one process holds two, for no more throughput (300,000
            # events, alternating: 26.1k/26.4k with 2 each vs 29.2k/26.6k with 1 each), and their
            # peak PSS summed was bench/ingest's memory target's margin (140/139 vs 124/137 MiB).
            consumer_writers=max(1, settings.consumer_writers // settings.consumer_processes),
            consumer_host="127.0.0.1",
            consumer_port=port,
            # Static membership needs one id per member.
            consumer_instance_id=f"{settings.consumer_instance_id}-{index}" if settings.consumer_instance_id else None,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _die_with_parent(parent)
                code = serve(member)
            finally:
                logging.shutdown()
                os._exit(code)
        members.append(Member(index, pid, f"http://127.0.0.1:{port}"))
        log.info("consumer process %d started (pid %d)", index, pid)
    return asyncio.run(_supervise(settings, members))


def _reap(members: list[Member]) -> Member | None:
    """Collect members that exited; returns the first one found."""
    gone = None
    for member in members:
        if member.exit_code is not None:
            continue
        pid, status = os.waitpid(member.pid, os.WNOHANG)
        if pid:
            member.exit_code = os.waitstatus_to_exitcode(status)
            gone = gone or member
    return gone


async def _supervise(settings: Settings, members: list[Member]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
    runner = web.AppRunner(_app(members, session), access_log=None)
    await runner.setup()
    code = 0
    try:
        await web.TCPSite(runner, settings.consumer_host, settings.consumer_port).start()
        log.info(
            "consumer group of %d processes; metrics and health on http://%s:%s",
            len(members),
            settings.consumer_host,
            settings.consumer_port,
        )
        while not stop.is_set():
            gone = _reap(members)
            if gone is not None:
                log.error(
                    "consumer process %d (pid %d) exited with %s; stopping the others",
                    gone.index,
                    gone.pid,
                    gone.exit_code,
                )
                # Even a clean exit of one member is the end of the group: its partitions
                # would otherwise sit with the others unnoticed by whoever restarts us.
                code = gone.exit_code or 1
                break
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.2)
            except TimeoutError:
                pass
    finally:
        await _stop_members(members)
        await runner.cleanup()
        await session.close()
    if code == 0:
        code = next((m.exit_code for m in members if m.exit_code), 0)
    log.info("consumer group stopped (exit %d)", code)
    return code


async def _stop_members(members: list[Member]) -> None:
    for member in members:
        if member.exit_code is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member.pid, signal.SIGTERM)
    deadline = asyncio.get_running_loop().time() + STOP_GRACE_SECONDS
    while True:
        _reap(members)
        if all(m.exit_code is not None for m in members):
            return
        if asyncio.get_running_loop().time() > deadline:
            for member in members:
                if member.exit_code is None:
                    log.error("consumer process %d did not stop in %.0fs; killing it", member.index, STOP_GRACE_SECONDS)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(member.pid, signal.SIGKILL)
            deadline = float("inf")
        await asyncio.sleep(0.1)


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    try:
        async with session.get(url) as response:
            return response.status, await response.text()
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return 503, f"unreachable: {exc}"


def merge_expositions(texts: list[tuple[int, str]]) -> str:
    """The members' /metrics texts (Prometheus text format 0.0.4, as generate_latest writes
    it) as one: each family's HELP and TYPE once, then every member's samples of it, each
    labelled ``process``.

    String work on lines, not prometheus_client's parser and renderer: those are Python per
    sample and cost the parent 24 ms of CPU per scrape of two members of ~760 lines each
    (bench/ingest polls once a second: the parse alone was 3 % of the consumer's samples);
    this takes 0.65 ms, a few slices per line.
    A sample line is ``name{labels} value`` or ``name value``, and a metric name holds neither
    a brace nor a space, so the label goes right after the name."""
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for index, text in texts:
        label = f'process="{index}"'
        family: list[str] = []
        for line in text.splitlines():
            if line.startswith("#"):
                # "# HELP name ..." opens a family; "# TYPE name ..." follows it.
                kind, _, rest = line[2:].partition(" ")
                name = rest.partition(" ")[0]
                if name not in headers:
                    headers[name], samples[name] = [], []
                if len(headers[name]) < 2:  # the first member's; the others' are the same
                    headers[name].append(line)
                family = samples[name]
            elif line:
                brace, space = line.find("{"), line.find(" ")
                if 0 <= brace < space:
                    sep = "" if line[brace + 1] == "}" else ","
                    family.append(f"{line[: brace + 1]}{label}{sep}{line[brace + 1 :]}")
                else:
                    family.append(f"{line[:space]}{{{label}}}{line[space:]}")
    return "".join("\n".join(headers[name] + samples[name]) + "\n" for name in headers)


def _app(members: list[Member], session: aiohttp.ClientSession) -> web.Application:
    async def each(path: str) -> list[tuple[Member, int, str]]:
        answers = await asyncio.gather(*(_get(session, m.url + path) for m in members))
        return [(m, status, text) for m, (status, text) in zip(members, answers, strict=True)]

    async def health(path: str) -> web.Response:
        answers = await each(path)
        processes = [
            {"process": m.index, "pid": m.pid, "status": "ok" if status == 200 else text[:300]}
            for m, status, text in answers
        ]
        ok = all(status == 200 for _, status, _ in answers)
        return web.json_response(
            {"status": "ok" if ok else "unavailable", "processes": processes}, status=200 if ok else 503
        )

    async def healthz(request: web.Request) -> web.Response:
        return await health("/healthz")

    async def readyz(request: web.Request) -> web.Response:
        return await health("/readyz")

    async def metrics(request: web.Request) -> web.Response:
        answers = await each("/metrics")
        text = merge_expositions([(m.index, text) for m, status, text in answers if status == 200])
        return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
