"""Producer library: emit tracker events from Python services, async or sync.

    async with Tracker("kafka:9092", service="copy") as tracker:
        trace_id = Tracker.new_trace_id()
        async with tracker.step(trace_id, "copy_files", files_incoming=[src]) as step:
            ...                                   # "received" now, "success" (or "error") after
            step.body["files_outgoing"] = [dst]   # lineage, stored with the outcome event
        tracker.finish(trace_id)                  # FINISHED, success (emitting never awaits)

    tracker = SyncTracker("kafka:9092", service="copy")   # same API, no event loop needed
    with tracker.step(trace_id, "copy_files"): ...
    unsent = tracker.close()                              # 0 when everything reached Kafka

Guarantees and limits: messages are keyed by trace id and produced with
acks=all and idempotence. Emitting never blocks the caller's work and never
raises into it: events are serialised at once and go into a bounded buffer
(``buffer_size``, default 10,000) that a background task hands to the Kafka
producer in batches of up to ``batch_size`` and waits for Kafka to acknowledge
each batch (so throughput is the broker's, not one round trip per event). An
event is dropped, counted in ``dropped`` and by reason in ``drops``, and
``emit`` returns False, when:

- ``buffer_full``: Kafka is slow or away long enough for the buffer to fill;
- ``too_large``: the serialised event is over ``max_message_bytes`` (the
  consumer's bound, default 1 MiB; it would be dead-lettered anyway);
- ``unserialisable``: a field cannot be encoded as JSON;
- ``rejected``: Kafka refused it for good (not a retriable error).

Retriable Kafka errors are retried with capped backoff, never dropped. The
first drop of each reason and then every 1,000th is logged. ``close()``
flushes what is buffered, waiting at most ``close_timeout`` seconds, and
returns the number of events it could not confirm as sent (also logged).

Not this module: publishing one message and waiting for Kafka's acknowledgement, as the
API's ``POST /v1/events`` and ``tracker send`` do, is ``tracker.producer.EventPublisher``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import threading
import time
import traceback
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from tracker.producer import start_producer

log = logging.getLogger("tracker.client")

DROP_REASONS = ("buffer_full", "too_large", "unserialisable", "rejected")


def _retriable(exc: BaseException) -> bool:
    # aiokafka marks the errors that can succeed on retry (leader moved, timeout, connection lost).
    return (
        isinstance(exc, KafkaError)
        and bool(getattr(exc, "retriable", False))
        or isinstance(exc, (ConnectionError, asyncio.TimeoutError))
    )


class Step:
    """The unit of work in flight; put lineage and other details in ``body``."""

    def __init__(self, trace_id: str, operation: str | None, body: dict) -> None:
        self.trace_id = trace_id
        self.operation = operation
        self.body = body
        self.started = time.monotonic()


class _Steps:
    """What a unit of work emits, shared by the async and the sync tracker (both have ``emit``)."""

    def emit(self, trace_id: str, status: str, **fields: Any) -> bool:
        raise NotImplementedError

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
    def __init__(
        self,
        bootstrap_servers: str,
        *,
        service: str,
        topic: str = "tracker.events",
        buffer_size: int = 10_000,
        meta: dict | None = None,
        close_timeout: float = 10.0,
        max_message_bytes: int = 1024 * 1024,
        batch_size: int = 2_000,
        producer_options: dict | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.service = service
        self.topic = topic
        self.meta = meta
        self.close_timeout = close_timeout
        self.max_message_bytes = max_message_bytes
        self.batch_size = batch_size
        self.producer_options = producer_options or {}
        self.buffer_size = buffer_size
        self.sent = 0
        self.drops: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        # A deque under a lock rather than an asyncio.Queue: SyncTracker's callers emit from
        # their own threads, and handing every event to the loop thread costs a round trip each.
        self._buffer: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._sender: asyncio.Task | None = None
        self._producer: AIOKafkaProducer | None = None

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    @property
    def pending(self) -> int:
        """Events accepted but not yet acknowledged by Kafka."""
        return len(self._buffer) + self._in_flight

    @staticmethod
    def new_trace_id() -> str:
        return str(uuid.uuid4())

    async def start(self) -> Tracker:
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._sender = asyncio.create_task(self._drain())
        return self

    async def __aenter__(self) -> Tracker:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def emit(self, trace_id: str, status: str, **fields: Any) -> bool:
        """Queue one event; False (counted in ``drops`` by reason) when it cannot be sent.
        Safe to call from any thread; never blocks and never raises."""
        try:
            event: dict[str, Any] = {
                "trace_id": trace_id,
                "event_id": str(uuid.uuid4()),
                "service": self.service,
                "status": status,
                "timestamp": datetime.now(UTC).isoformat(),
            }
            if self.meta:
                event["meta"] = self.meta
            event.update({k: v for k, v in fields.items() if v is not None})
            value = orjson.dumps(event)
            key = str(trace_id).encode()
        except (TypeError, ValueError, orjson.JSONEncodeError) as exc:
            return self._drop("unserialisable", exc)
        if len(value) > self.max_message_bytes:
            return self._drop("too_large", f"{len(value)} bytes > {self.max_message_bytes}")
        with self._lock:
            if len(self._buffer) >= self.buffer_size:
                full = True
            else:
                full = False
                self._buffer.append((key, value))
        if full:
            return self._drop("buffer_full", "Kafka slow or away")
        self._kick()
        return True

    def _kick(self) -> None:
        loop, wakeup = self._loop, self._wakeup
        if loop is None or wakeup is None or wakeup.is_set():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wakeup.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closing: close() counts what is left
                loop.call_soon_threadsafe(wakeup.set)

    def _drop(self, reason: str, detail: Any) -> bool:
        with self._lock:
            self.drops[reason] += 1
            n = self.drops[reason]
        if n % 1000 == 1:
            log.warning("tracker dropped an event (%s: %s); %d dropped for this reason so far", reason, detail, n)
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
        assert self._wakeup is not None
        while True:
            if not self._buffer:
                self._wakeup.clear()
                if not self._buffer:  # an emit between the check and clear() set it again
                    await self._wakeup.wait()
                continue
            with self._lock:
                n = min(len(self._buffer), self.batch_size)
                batch = [self._buffer.popleft() for _ in range(n)]
                self._in_flight = n
            # Returns when every event of the batch is acknowledged or dropped (in_flight is 0 then);
            # cancelled by close(), what is left in flight is counted as unsent.
            await self._send_batch(batch)

    async def _started_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            options = {
                "acks": "all",
                "enable_idempotence": True,
                "linger_ms": 5,
                "max_batch_size": 256 * 1024,
                "max_request_size": self.max_message_bytes + 64 * 1024,
                **self.producer_options,
            }
            self._producer = await start_producer(self.bootstrap_servers, **options)
        return self._producer

    async def _send_batch(self, batch: list[tuple[bytes, bytes]]) -> None:
        """Hand the whole batch to the producer, then wait for every acknowledgement; what
        failed retriably is sent again after a backoff, what Kafka refused for good is dropped."""
        delay = 0.5
        while batch:
            retry: list[tuple[bytes, bytes]] = []
            last_error: BaseException | None = None
            try:
                producer = await self._started_producer()
            except KafkaError as exc:
                log.warning("tracker could not reach Kafka (%s); retrying in %.1fs", exc, delay)
                retry = batch
            else:
                futures: list[tuple[tuple[bytes, bytes], Any]] = []
                for item in batch:
                    try:
                        futures.append((item, await producer.send(self.topic, item[1], key=item[0])))
                    except Exception as exc:  # classified below, with the acknowledgements
                        futures.append((item, exc))
                for item, future in futures:
                    outcome = future if isinstance(future, BaseException) else None
                    if outcome is None:
                        try:
                            await future
                        except Exception as exc:
                            outcome = exc
                    if outcome is None:
                        self.sent += 1
                        self._in_flight -= 1
                    elif _retriable(outcome):
                        retry.append(item)
                        last_error = outcome
                    else:
                        self._in_flight -= 1
                        self._drop("rejected", f"{type(outcome).__name__}: {outcome}")
                if retry:
                    log.warning(
                        "tracker: Kafka did not take %d event(s) (%s: %s); retrying in %.1fs",
                        len(retry),
                        type(last_error).__name__,
                        last_error,
                        delay,
                    )
            if retry:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)
            batch = retry

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every accepted event is acknowledged by Kafka; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.pending:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    async def close(self) -> int:
        """Flush for at most ``close_timeout`` seconds, stop, and return how many accepted
        events were not confirmed as sent (0 when everything reached Kafka)."""
        if self._sender is None:
            return 0
        await self.flush(self.close_timeout)
        self._sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sender
        self._sender = None
        unsent = self.pending
        self._buffer.clear()
        self._in_flight = 0
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._producer.stop(), timeout=max(self.close_timeout, 1))
            self._producer = None
        if unsent:
            log.warning("tracker closed with %d event(s) not sent", unsent)
        return unsent


def _outcome(step: Step, exc: BaseException | None) -> dict:
    fields: dict[str, Any] = {
        "operation": step.operation,
        "duration_ms": round((time.monotonic() - step.started) * 1000, 3),
    }
    if step.body:
        fields["body"] = step.body
    if exc is not None:
        fields["message"] = f"{type(exc).__name__}: {exc}"[:8192]
        fields["exception"] = {
            "type": type(exc).__name__,
            "message": str(exc)[:8192],
            "traceback": "".join(traceback.format_exception(exc))[-60_000:],
        }
    return fields


class SyncTracker(_Steps):
    """The same for code without an event loop: a background thread runs one."""

    def __init__(self, bootstrap_servers: str, *, service: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tracker-client", daemon=True)
        self._thread.start()
        self._tracker = asyncio.run_coroutine_threadsafe(
            self._make(bootstrap_servers, service, options), self._loop
        ).result()

    async def _make(self, bootstrap_servers, service, options) -> Tracker:
        return await Tracker(bootstrap_servers, service=service, **options).start()

    new_trace_id = staticmethod(Tracker.new_trace_id)

    @property
    def dropped(self) -> int:
        return self._tracker.dropped

    @property
    def drops(self) -> dict[str, int]:
        return self._tracker.drops

    @property
    def sent(self) -> int:
        return self._tracker.sent

    def emit(self, trace_id: str, status: str, **fields: Any) -> bool:
        # Tracker.emit is thread-safe: it appends under a lock and wakes the loop's thread.
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

    def close(self) -> int:
        """As Tracker.close: the number of events not confirmed as sent."""
        unsent = asyncio.run_coroutine_threadsafe(self._tracker.close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        return unsent
