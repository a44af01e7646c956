"""The Kafka -> PostgreSQL loop: getmany, validate, dead-letter, write, then commit.

Three kinds of failure, three ways (the reason is at each place below):
- a bad message: dead-lettered with its reason, counted, the partition moves on;
- PostgreSQL or Kafka unavailable: the same batch is retried with capped
  exponential backoff, nothing is committed meanwhile, nothing is skipped;
- anything else: raised, the process exits non-zero, Kafka redelivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import operator
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    KafkaTimeoutError,
    RebalanceInProgressError,
)
from aiokafka.structs import ConsumerRecord

from consumer.deadletter import DeadLetter, dead_letter, publish_pending
from consumer.metrics import ConsumerMetrics
from consumer.store import write_batch
from tracker.db import TRANSIENT_ERRORS
from tracker.events import Event, Invalid, parse_message
from tracker.settings import Settings

log = logging.getLogger("tracker.consumer")

T = TypeVar("T")
_timestamp = operator.attrgetter("timestamp")


@dataclass
class ParsedBatch:
    """What writing and committing a fetch needs, and no more: the messages themselves are
    let go once parsed (kept, they were a third of a consumer's memory at its peak, with a
    fetch being parsed while two wait for their writers and two are written)."""

    offsets: dict[TopicPartition, int]  # per partition, the offset to commit (last + 1)
    timestamps: list[int]  # the messages' Kafka timestamps (ms), for the event lag
    count: int  # messages
    events: list[Event]
    dead: list[DeadLetter]  # with the message: a dead letter carries it

    def merge(self, other: ParsedBatch) -> None:
        """Append a later fetch of the same writer's partitions."""
        for tp, offset in other.offsets.items():
            # max: a partition re-fetched from an earlier offset (it was revoked and assigned
            # back) must not move the offset to commit backwards past records already merged.
            self.offsets[tp] = max(offset, self.offsets.get(tp, 0))
        self.timestamps += other.timestamps
        self.count += other.count
        self.events += other.events
        self.dead += other.dead


class _Slot:
    """What one writer writes next: the fetches parsed since it last took one, merged.

    ``put`` waits while the fetch would take the slot over ``cap`` messages (a backlog: the
    fetch loop stops reading ahead, so memory stays bounded at one full slot and one batch
    being written per writer); ``take`` waits until there is something, or returns None once closed and
    empty."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.batch: ParsedBatch | None = None
        self.closed = False
        self._changed = asyncio.Condition()

    async def room(self, least: int) -> int:
        """How many messages the slot can still take, once that is at least ``least``."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.cap - self.count >= least)
            return self.cap - self.count

    @property
    def count(self) -> int:
        return 0 if self.batch is None else self.batch.count

    async def put(self, parsed: ParsedBatch) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.batch is None or self.batch.count + parsed.count <= self.cap)
            if self.batch is None:
                self.batch = parsed
            else:
                self.batch.merge(parsed)
            self._changed.notify_all()

    async def take(self) -> ParsedBatch | None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.batch is not None or self.closed)
            batch, self.batch = self.batch, None
            self._changed.notify_all()
            return batch

    async def close(self) -> None:
        """No more puts: the writer takes what is left, then ``take`` returns None."""
        async with self._changed:
            self.closed = True
            self._changed.notify_all()


async def _until(step: Awaitable[T], writer: asyncio.Task) -> T:
    """Await ``step`` (waiting on ``writer``'s slot), or raise what the writer failed with
    while we waited: a writer that died would otherwise leave the fetch loop waiting forever."""
    waiting = asyncio.ensure_future(step)
    await asyncio.wait((waiting, writer), return_when=asyncio.FIRST_COMPLETED)
    if not waiting.done():
        waiting.cancel()
        await writer
        raise RuntimeError("a writer ended before the consumer stopped")
    return waiting.result()


class Stopping(Exception):
    """Shutdown was asked for while waiting for a service; the batch is left uncommitted."""


class DeadLetterFlood(Exception):
    """More than TRACKER_DLQ_MAX_RATIO of the recent messages were invalid: stop rather than
    dead-letter a whole topic (a producer deployed a broken format). Nothing of the batch
    that tripped it is dead-lettered or committed; after the fix, a restart resumes there."""


def is_transient(exc: BaseException) -> bool:
    """Can the same attempt succeed later? Only then is it retried; anything else ends the
    process (non-zero), the supervisor restarts it and Kafka redelivers the batch.

    Kafka says so per error class (``retriable``: no leader, coordinator moving, connection
    lost); a timeout is a broker not answering. Not retriable: a record too large for the
    broker, an authorisation failure, a bad configuration — retrying those stalls forever."""
    if isinstance(exc, KafkaError):
        return exc.retriable or isinstance(exc, KafkaTimeoutError)
    return isinstance(exc, (asyncio.TimeoutError, *TRANSIENT_ERRORS))


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked):
        # Wait for the batches in flight (every writer's) and their offset commits: each batch's
        # offsets are committed before the partitions move. The locks are taken in a fixed order.
        async with contextlib.AsyncExitStack() as held:
            for lock in self.sink.writer_locks:
                await held.enter_async_context(lock)
            try:
                await self.sink.commits_done()
            except Exception as exc:  # the new owner redelivers; it finds the events stored
                log.warning(
                    "an offset commit failed before a rebalance (%s: %s); the new owner gets "
                    "those messages again and finds their events stored",
                    type(exc).__name__,
                    exc,
                )
            self.sink.forget(revoked)
            log.info("partitions revoked: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked))

    async def on_partitions_assigned(self, assigned):
        self.sink.metrics.assigned_partitions.set(len(assigned))
        log.info("partitions assigned: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))


class Sink:
    def __init__(
        self,
        settings: Settings,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        pool: asyncpg.Pool,
        metrics: ConsumerMetrics,
        stop: asyncio.Event,
        *,
        dead_letter_limit: int,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.producer = producer
        self.pool = pool
        self.metrics = metrics
        self.stop = stop
        # One writer per group of partitions (partition % writers), each with its own
        # connection and its own strictly ordered write-then-commit; see run().
        self.writers = max(1, settings.consumer_writers)
        self.writer_locks = [asyncio.Lock() for _ in range(self.writers)]
        # Offsets go to Kafka after the database commit, at most once per commit interval per
        # writer (see _commit_when_due). Per writer: the offsets stored but not committed yet,
        # the commit in flight, when it started (monotonic), and the task that commits what a
        # quiet spell left pending.
        self.commit_interval = settings.commit_interval_ms / 1000
        self.pending: list[dict[TopicPartition, int]] = [{} for _ in range(self.writers)]
        self.commits: list[asyncio.Task | None] = [None] * self.writers
        self.commit_started = [-math.inf] * self.writers
        self.flushers: list[asyncio.Task | None] = [None] * self.writers
        self.committed: dict[TopicPartition, int] = {}
        self.last_poll = time.monotonic()
        self.paused = False  # waiting for PostgreSQL or Kafka to come back
        # Dead letters recorded but not on the dead-letter topic yet: a crash left some, or the
        # topic refused one. True at start, so that the first round publishes any leftovers.
        self.dead_letters_waiting = True
        # The producer's max_request_size: a dead letter is cut to fit it (deadletter.py).
        self.dead_letter_limit = dead_letter_limit
        # (messages, invalid) per recent batch, for TRACKER_DLQ_MAX_RATIO.
        self._recent: deque[tuple[int, int]] = deque()
        self._recent_total = self._recent_invalid = 0

    def forget(self, revoked) -> None:
        """Partitions moved away: drop their series, so each partition's lag is exported
        by its owner only (a stale copy here would be summed with the owner's)."""
        for tp in revoked:
            self.committed.pop(tp, None)
            for pending in self.pending:  # left only if the commit before the rebalance failed
                pending.pop(tp, None)
            for gauge in (self.metrics.lag, self.metrics.highwater):
                try:
                    gauge.remove(str(tp.partition))
                except KeyError:
                    pass

    def listener(self) -> ConsumerRebalanceListener:
        return _Rebalance(self)

    async def run(self) -> None:
        """Consume until ``stop`` is set; the batches in flight are finished and committed first.

        The fetch loop and the writers meet at one slot per writer (``_Slot``). The loop
        validates each fetch as soon as it arrives and merges it, split by partition
        (partition % writers), into the writer's slot; a writer that finishes a batch takes
        everything its slot gathered meanwhile and writes it as one transaction, then commits
        its offsets. So a batch is whatever arrived during the previous write, with no timer:
        a few dozen events at a steady 2,000 events/s, where an event waits for at most the
        write in progress and its own (docs/decisions/010), and the slot's cap under a backlog,
        where large batches keep the cost per event low. Parsing overlaps the writes, so this
        core validates while PostgreSQL writes.

        A partition always falls to the same writer, so its offsets are committed in order.
        Concurrent transactions cannot deadlock: each takes its row locks in one global order
        (consumer/store.py) — which also holds when a trace id spans partitions (a producer
        that does not key by trace id).
        """
        cap = self.settings.batch_max_records
        slots = [_Slot(cap) for _ in range(self.writers)]
        writers = [asyncio.create_task(self._writer(slot, w)) for w, slot in enumerate(slots)]
        try:
            while not self.stop.is_set():
                # Fetch no more than the fullest slot can take: under a backlog the messages wait
                # in Kafka, not in this process (memory: per writer one full slot and one batch
                # being written, at most).
                room = cap
                for slot, task in zip(slots, writers, strict=True):
                    room = min(room, await _until(slot.room(max(1, cap // 4)), task))
                self.last_poll = time.monotonic()
                batch = await self.consumer.getmany(timeout_ms=self.settings.batch_timeout_ms, max_records=room)
                for task in writers:
                    if task.done():
                        await task  # a writer stopped early: surface its exception
                        raise RuntimeError("a writer ended before the consumer stopped")
                if not batch:
                    continue
                parts = await self.parse(batch)
                del batch  # parsed: let the messages go before waiting for a writer
                for writer, parsed in parts.items():
                    await _until(slots[writer].put(parsed), writers[writer])
                del parts
            for slot in slots:
                await slot.close()
            for task in writers:
                await task
            await self.commits_done()
        except Stopping:
            log.info("stopping with a batch uncommitted; Kafka will redeliver it")
        finally:
            for task in [*writers, *filter(None, self.commits), *filter(None, self.flushers)]:
                if not task.done():
                    # Only on an error path: its offsets are not committed, so Kafka redelivers it.
                    task.cancel()

    async def commits_done(self) -> None:
        """Commit every writer's pending offsets now and wait for every commit (a revocation, a
        stop); then raise what the first one that failed raised, if any."""
        await self._gather_commits()
        for writer, pending in enumerate(self.pending):
            if pending:
                self._start_commit(writer)
        await self._gather_commits()

    async def _gather_commits(self) -> None:
        tasks = [task for task in self.commits if task is not None]
        self.commits = [None] * self.writers
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome

    def _start_commit(self, writer: int) -> None:
        """Send the writer's pending offsets (no commit of its own is in flight)."""
        offsets, self.pending[writer] = self.pending[writer], {}
        self.commit_started[writer] = time.monotonic()
        self.commits[writer] = asyncio.create_task(self._commit(offsets))

    def _commit_when_due(self, writer: int) -> None:
        """After a batch is stored: its offsets are pending; the writer's flusher commits them
        once no commit of the writer's is in flight and the last one started a commit interval
        ago or more. A commit that failed is raised here (the writer's next batch).

        Why not every batch: at a steady 2,000 events/s that was a few hundred commits a
        second, each a request the broker writes to its offsets topic, for nothing the database
        needs — a batch redelivered after a crash finds its events stored and changes nothing
        (decision 002). A crash now redelivers up to an interval of messages more."""
        task = self.commits[writer]
        if task is not None and task.done():
            self.commits[writer] = None
            task.result()
        flusher = self.flushers[writer]
        if flusher is None or flusher.done():
            self.flushers[writer] = asyncio.create_task(self._flush_when_due(writer))

    async def _flush_when_due(self, writer: int) -> None:
        """Commit what the writer has pending, once due, until nothing is: the offsets of the
        last batches before the topic goes quiet are committed too, without another message.
        No await between the last look at ``pending`` and the return: a batch stored later
        finds this task done and starts another."""
        while self.pending[writer]:
            task = self.commits[writer]
            if task is not None and not task.done():
                await asyncio.wait([task])
                continue
            if task is not None and (task.cancelled() or task.exception() is not None):
                return  # raised by the writer's next batch, or by the stop
            delay = self.commit_started[writer] + self.commit_interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            self._start_commit(writer)

    async def _writer(self, slot: _Slot, writer: int) -> None:
        while (parsed := await slot.take()) is not None:
            await self.store(parsed, writer)

    async def report_lag(self, interval: float = 5.0) -> None:
        """Every few seconds: per partition, the high-water mark and what is not committed yet,
        and the dead letters still waiting, if any, published. Runs apart from the batch loop
        so that lag still shows while writes are retried."""
        while not self.stop.is_set():
            if self.dead_letters_waiting:
                await self.publish_dead_letters()
            for tp in self.consumer.assignment():
                highwater = self.consumer.highwater(tp)
                if highwater is None:
                    continue
                committed = self.committed.get(tp)
                if committed is None:
                    committed = await self._committed(tp)
                partition = str(tp.partition)
                self.metrics.highwater.labels(partition).set(highwater)
                self.metrics.lag.labels(partition).set(max(0, highwater - committed))
            try:
                await asyncio.wait_for(self.stop.wait(), timeout=interval)
            except TimeoutError:
                pass

    async def _committed(self, tp: TopicPartition) -> int:
        try:
            offset = await self.consumer.committed(tp)
        except KafkaError:
            return 0
        self.committed[tp] = offset or 0
        return self.committed[tp]

    async def parse(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> dict[int, ParsedBatch]:
        """Validate every record; the result split by writer (partition % writers)."""
        out: dict[int, ParsedBatch] = {}
        max_bytes = self.settings.max_message_bytes
        n = 0
        for tp, records in batch.items():
            part = out.get(tp.partition % self.writers)
            if part is None:
                part = out[tp.partition % self.writers] = ParsedBatch({}, [], 0, [], [])
            part.offsets[tp] = records[-1].offset + 1
            part.timestamps.extend(map(_timestamp, records))
            part.count += len(records)
            events, dead = part.events, part.dead
            for record in records:
                n += 1
                if n % 250 == 0:
                    # Let the writes in flight send their next statement: PostgreSQL works on
                    # them while this core validates the next batch, instead of waiting.
                    await asyncio.sleep(0)
                parsed = parse_message(record.value, max_bytes=max_bytes)
                if isinstance(parsed, Invalid):
                    log.debug(
                        "invalid message %s[%d]@%d: %s", record.topic, record.partition, record.offset, parsed.detail
                    )
                    dead.append(dead_letter(record, parsed, self.dead_letter_limit))
                else:
                    events.append(parsed)
        return out

    async def store(self, parsed: ParsedBatch, writer: int = 0) -> None:
        async with self.writer_locks[writer]:  # a revocation waits for this batch to commit
            await self._store(parsed, writer)

    async def _store(self, parsed: ParsedBatch, writer: int = 0) -> None:
        events, dead, count = parsed.events, parsed.dead, parsed.count

        self._check_flood(count, len(dead))
        started = time.perf_counter()
        # The dead letters are recorded in the events' transaction: a crash cannot record one twice.
        result = await self._retrying("database", lambda: self._write(events, dead))
        self.metrics.write_seconds.observe(time.perf_counter() - started)
        self.metrics.last_stored.set_to_current_time()
        if dead:
            for letter in dead:
                self.metrics.invalid.labels(letter.reason).inc()
            log.warning("dead-lettered %d invalid message(s) of %d, first: %s", len(dead), count, dead[0].detail)

        # Partitions revoked since the fetch are another consumer's now; it will find
        # these events already stored. Committing them would only be refused.
        assigned = self.consumer.assignment()
        offsets = {tp: offset for tp, offset in parsed.offsets.items() if tp in assigned}
        if offsets:
            # The commit goes on while this writer writes its next batches: awaited here, it was
            # a broker round trip (~6 ms) in every write cycle, and so in every event's wait. A
            # writer's commits stay in order (one in flight at a time), and a revocation and a
            # stop commit what is pending and wait for them all.
            self.pending[writer].update(offsets)
            self._commit_when_due(writer)
        if dead or self.dead_letters_waiting:
            await self.publish_dead_letters()

        self.metrics.event_lag.observe_ages(parsed.timestamps, time.time() * 1000)
        self.metrics.record_batch(result)
        self.metrics.messages.labels("stored").inc(result.inserted)
        self.metrics.messages.labels("duplicate").inc(result.duplicates)
        self.metrics.messages.labels("dead_lettered").inc(len(dead))
        self.metrics.batches.inc()
        self.metrics.batch_size.observe(count)
        log.debug(
            "batch: %d messages, %d new, %d duplicate, %d dead-lettered",
            count,
            result.inserted,
            result.duplicates,
            len(dead),
        )

    def _check_flood(self, count: int, invalid: int) -> None:
        """Raise DeadLetterFlood when over the last ``dlq_window_messages`` (whole batches)
        more than ``dlq_max_ratio`` were invalid. Off when the ratio is 0."""
        ratio = self.settings.dlq_max_ratio
        if ratio <= 0:
            return
        self._recent.append((count, invalid))
        self._recent_total += count
        self._recent_invalid += invalid
        window = self.settings.dlq_window_messages
        while len(self._recent) > 1 and self._recent_total - self._recent[0][0] >= window:
            old_count, old_invalid = self._recent.popleft()
            self._recent_total -= old_count
            self._recent_invalid -= old_invalid
        if self._recent_total >= window and self._recent_invalid > ratio * self._recent_total:
            raise DeadLetterFlood(
                f"{self._recent_invalid} of the last {self._recent_total} messages were invalid, over "
                f"TRACKER_DLQ_MAX_RATIO={ratio}; stopping without dead-lettering or committing this batch "
                f"(see tracker_consumer_invalid_messages_total by reason, fix the producer, then restart)"
            )

    async def publish_dead_letters(self) -> None:
        """Feed the dead-letter topic from the table (consumer/deadletter.py). Kafka or PostgreSQL
        unavailable: retried like a batch. A refusal no retry can fix (a record the topic will not
        take): logged, flagged in tracker_consumer_dead_letters_waiting and tried again after the
        next batch and every few seconds; the valid events keep flowing meanwhile, and the
        dead letters are listed by the API."""
        try:
            await self._retrying("kafka", lambda: publish_pending(self.pool, self.producer, self.settings.dlq_topic))
        except Stopping:
            return  # shutting down during an outage: the next start publishes them
        except KafkaError as exc:  # not retriable: _retrying retried the rest
            if not self.dead_letters_waiting:
                log.error(
                    "the dead-letter topic %s refused a dead letter (%s: %s); it stays recorded in "
                    "dead_letters and is tried again later",
                    self.settings.dlq_topic,
                    type(exc).__name__,
                    exc,
                )
            self.dead_letters_waiting = True
        else:
            self.dead_letters_waiting = False
        self.metrics.dead_letters_waiting.set(int(self.dead_letters_waiting))

    async def _write(self, events: list[Event], dead: list[DeadLetter]):
        async with self.pool.acquire() as conn:
            try:
                return await write_batch(conn, events, dead)
            except BaseException:
                # A connection interrupted mid-COPY can be left in a state asyncpg's pool does
                # not detect; never reuse it. The pool opens a fresh one for the retry.
                conn.terminate()
                raise

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            await self._retrying("kafka", lambda: self.consumer.commit(offsets))
            self.committed.update(offsets)
            self.metrics.last_commit.set_to_current_time()
        except (CommitFailedError, IllegalStateError, RebalanceInProgressError) as exc:
            # The partitions moved to another consumer while we wrote. The rows are
            # stored; the new owner gets the batch again and finds every event already
            # there (idempotent by event id), so nothing is lost or counted twice.
            log.warning("offset commit refused after a rebalance (%s); the new owner will skip the stored events", exc)

    async def _retrying(self, target: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Retry an infrastructure failure with capped exponential backoff, never skipping."""
        delay = 0.2
        while True:
            try:
                result = await attempt()
                self.paused = False
                self.metrics.paused.set(0)
                return result
            except (CommitFailedError, IllegalStateError, RebalanceInProgressError):
                raise
            except (TimeoutError, KafkaError, *TRANSIENT_ERRORS) as exc:
                if not is_transient(exc):
                    log.error("%s refused (%s: %s); this cannot succeed on retry", target, type(exc).__name__, exc)
                    raise
                if self.stop.is_set():
                    raise Stopping() from exc
                self.paused = True
                self.metrics.paused.set(1)
                self.metrics.retries.labels(target).inc()
                log.warning(
                    "%s unavailable (%s: %s); retrying in %.1fs, offsets not committed",
                    target,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await self._sleep(delay + random.uniform(0, delay / 4))
                delay = min(delay * 2, self.settings.retry_max_seconds)

    async def _sleep(self, seconds: float) -> None:
        # Wake early on shutdown so that SIGTERM during an outage exits promptly.
        try:
            await asyncio.wait_for(self.stop.wait(), timeout=seconds)
        except TimeoutError:
            pass
