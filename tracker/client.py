"""Producer library: emit tracker events from Python services, async or sync.

    async with Tracker("kafka:9092", service="copy") as tracker:
        trace_id = Tracker.new_trace_id()
        async with tracker.step(trace_id, "copy_files", files_incoming=[src]) as step:
            ...                                   # "received" now, "success" (or "error") after
            step.body["files_outgoing"] = [dst]   # lineage, stored with the outcome event
        await tracker.finish(trace_id)            # FINISHED, success

    tracker = SyncTracker("kafka:9092", service="copy")   # same API, no event loop needed
    with tracker.step(trace_id, "copy_files"): ...
    tracker.close()

Guarantees and limits: messages are keyed by trace id and produced with
acks=all and idempotence. Emitting never blocks the caller's work: events go
into a bounded buffer (``buffer_size``, default 10,000) drained in the
background; when Kafka is slow or away long enough for the buffer to fill,
further events are dropped and counted in ``Tracker.dropped`` (and logged once
per 1,000), never raised into the caller. ``close()`` flushes what is buffered,
waiting at most ``close_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
import traceback
import uuid
from datetime import datetime, timezone
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

log = logging.getLogger("tracker.client")


class Step:
    """The unit of work in flight; put lineage and other details in ``body``."""

    def __init__(self, trace_id: str, operation: str | None, body: dict) -> None:
        self.trace_id = trace_id
        self.operation = operation
        self.body = body
        self.started = time.monotonic()


class _Steps:
    """What a unit of work emits, shared by the async and the sync tracker (both have ``emit``)."""

    def _begin(self, trace_id: str, operation: str | None, body: dict) -> Step:
        step = Step(trace_id, operation, dict(body))
        self.emit(trace_id, "received", operation=operation)
        return step

    def _end(self, step: Step, exc: BaseException | None) -> None:
        self.emit(step.trace_id, "error" if exc is not None else "success", **_outcome(step, exc))

    def finish(self, trace_id: str, *, failed: bool = False, message: str | None = None) -> bool:
        """Mark the trace done (``trace_status`` FINISHED) with its outcome."""
        return self.emit(trace_id, "error" if failed else "success", trace_status="FINISHED", message=message)


class Tracker(_Steps):
    def __init__(self, bootstrap_servers: str, *, service: str, topic: str = "tracker.events",
                 buffer_size: int = 10_000, meta: dict | None = None, close_timeout: float = 10.0) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.service = service
        self.topic = topic
        self.meta = meta
        self.close_timeout = close_timeout
        self.dropped = 0
        self.sent = 0
        self._queue: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue(maxsize=buffer_size)
        self._sender: asyncio.Task | None = None

    @staticmethod
    def new_trace_id() -> str:
        return str(uuid.uuid4())

    async def start(self) -> "Tracker":
        self._sender = asyncio.create_task(self._drain())
        return self

    async def __aenter__(self) -> "Tracker":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def emit(self, trace_id: str, status: str, **fields: Any) -> bool:
        """Queue one event; False (and counted in ``dropped``) when the buffer is full."""
        event = {"trace_id": trace_id, "event_id": str(uuid.uuid4()), "service": self.service, "status": status,
                 "timestamp": datetime.now(timezone.utc).isoformat()}
        if self.meta:
            event["meta"] = self.meta
        event.update({k: v for k, v in fields.items() if v is not None})
        try:
            self._queue.put_nowait((trace_id.encode(), orjson.dumps(event)))
            return True
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("tracker buffer full (Kafka slow or away): %d event(s) dropped so far", self.dropped)
            return False

    @contextlib.asynccontextmanager
    async def step(self, trace_id: str, operation: str | None = None, **body: Any):
        """Emit ``received``, run the block, emit ``success`` or ``error`` (and re-raise)."""
        step = self._begin(trace_id, operation, body)
        try:
            yield step
        except BaseException as exc:
            self._end(step, exc)
            raise
        self._end(step, None)

    def traced(self, operation: str | None = None, *, trace_id_arg: str = "trace_id"):
        """Decorator for an async function called with a ``trace_id`` keyword argument."""
        def decorate(fn):
            @functools.wraps(fn)
            async def wrapper(*args, **kwargs):
                async with self.step(kwargs[trace_id_arg], operation or fn.__name__):
                    return await fn(*args, **kwargs)
            return wrapper
        return decorate

    async def _drain(self) -> None:
        producer = None
        delay = 0.5
        while True:
            key, value = await self._queue.get()
            while True:
                try:
                    if producer is None:
                        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap_servers, acks="all",
                                                    enable_idempotence=True, linger_ms=5)
                        try:
                            await producer.start()
                        except BaseException:
                            await producer.stop()
                            producer = None
                            raise
                    await producer.send_and_wait(self.topic, value, key=key)
                    self.sent += 1
                    delay = 0.5
                    break
                except KafkaError as exc:
                    log.warning("tracker could not reach Kafka (%s); retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30)
                except asyncio.CancelledError:
                    if producer is not None:
                        await producer.stop()
                    raise
            self._queue.task_done()

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued event is in Kafka; False on timeout."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def close(self) -> None:
        if self._sender is None:
            return
        if not await self.flush(self.close_timeout):
            log.warning("tracker closed with %d event(s) not sent", self._queue.qsize())
        self._sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sender
        self._sender = None


def _outcome(step: Step, exc: BaseException | None) -> dict:
    fields: dict[str, Any] = {"operation": step.operation,
                              "duration_ms": round((time.monotonic() - step.started) * 1000, 3)}
    if step.body:
        fields["body"] = step.body
    if exc is not None:
        fields["message"] = f"{type(exc).__name__}: {exc}"[:8192]
        fields["exception"] = {"type": type(exc).__name__, "message": str(exc)[:8192],
                               "traceback": "".join(traceback.format_exception(exc))[-60_000:]}
    return fields


class SyncTracker(_Steps):
    """The same for code without an event loop: a background thread runs one."""

    def __init__(self, bootstrap_servers: str, *, service: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tracker-client", daemon=True)
        self._thread.start()
        self._tracker = asyncio.run_coroutine_threadsafe(self._make(bootstrap_servers, service, options),
                                                         self._loop).result()

    async def _make(self, bootstrap_servers, service, options) -> Tracker:
        return await Tracker(bootstrap_servers, service=service, **options).start()

    new_trace_id = staticmethod(Tracker.new_trace_id)

    @property
    def dropped(self) -> int:
        return self._tracker.dropped

    def emit(self, trace_id: str, status: str, **fields: Any) -> bool:
        # The queue belongs to the loop's thread; hand the call over and wait only for the enqueue.
        return asyncio.run_coroutine_threadsafe(self._emit(trace_id, status, fields), self._loop).result()

    async def _emit(self, trace_id, status, fields) -> bool:
        return self._tracker.emit(trace_id, status, **fields)

    @contextlib.contextmanager
    def step(self, trace_id: str, operation: str | None = None, **body: Any):
        step = self._begin(trace_id, operation, body)
        try:
            yield step
        except BaseException as exc:
            self._end(step, exc)
            raise
        self._end(step, None)

    def traced(self, operation: str | None = None, *, trace_id_arg: str = "trace_id"):
        def decorate(fn):
            @functools.wraps(fn)
            def wrapper(*args, **kwargs):
                with self.step(kwargs[trace_id_arg], operation or fn.__name__):
                    return fn(*args, **kwargs)
            return wrapper
        return decorate

    def flush(self, timeout: float | None = None) -> bool:
        return asyncio.run_coroutine_threadsafe(self._tracker.flush(timeout), self._loop).result()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._tracker.close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
