"""The consumer's Prometheus metrics: one registry, built by the process, passed in."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Sequence
from typing import cast

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import HistogramMetricFamily

import tracker

# From a 1 ms write to a slow one under load; event lag up to hours (a backlog).
_WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)
_BATCH_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)
# Elapsed times in a pipeline: milliseconds to hours.
_ELAPSED_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
    7200,
    14400,
    43200,
    86400,
)


class LabelBounder:
    """Keeps a label's values bounded: the first ``limit`` distinct values pass, later ones become 'other'.

    First come rather than "most frequent over time" because a Prometheus series must
    keep its labels: a value once admitted keeps its series, and a burst of junk service
    names can add at most ``limit`` series. Services normally appear in the first minutes.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.admitted: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.admitted:
            return value
        if len(self.admitted) < self.limit:
            self.admitted.add(value)
            return value
        return "other"


class BatchHistogram:
    """A histogram observed a batch of values at a time, exported like prometheus_client's.

    prometheus_client's Histogram takes one value per call (a lock and a loop over the buckets
    each time): per message on the hot path it was ~2 % of the consumer's CPU (bench/ingest's
    profile). Here a batch is counted with bisect under one lock, per label values;
    collect() exports the same _bucket/_sum/_count series through the library's public
    custom-collector interface. A labelled series appears with its first observation, as
    prometheus_client's do; an unlabelled one is exported from the start.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Iterable[float],
        registry: CollectorRegistry,
        labelnames: Sequence[str] = (),
    ) -> None:
        self.name, self.documentation = name, documentation
        self.labelnames = tuple(labelnames)
        self.bounds = [float(b) for b in buckets]
        # label values -> bucket counts (the last one is +Inf) and the sum
        self._series: dict[tuple[str, ...], tuple[list[int], float]] = {}
        if not self.labelnames:
            self._series[()] = ([0] * (len(self.bounds) + 1), 0.0)
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: Iterable[float], labels: tuple[str, ...] = ()) -> None:
        bounds, counts, total = self.bounds, [0] * (len(self.bounds) + 1), 0.0
        for value in values:
            counts[bisect.bisect_left(bounds, value)] += 1  # buckets are "less than or equal"
            total += value
        self._add(labels, counts, total)

    def observe_ages(self, timestamps_ms: Sequence[int | None], now_ms: float, labels: tuple[str, ...] = ()) -> None:
        """Observe, for each timestamp (ms since the epoch), the seconds from it to ``now_ms``:
        0 for one in the future; none for one <= 0 (Kafka's "no timestamp").

        Counted by bisecting the sorted timestamps once per bucket bound (an age <= b is a
        timestamp >= now - b): sorting and summing are C, where observe_many's loop is Python
        per value — for the event lag, one value per message (~0.5 µs of the consumer's CPU
        each, bench/ingest's profile)."""
        try:
            # Sorted as they are (C), on the chance that no None is among them.
            ts = sorted(cast("Sequence[int]", timestamps_ms))
        except TypeError:  # a None among them (a message format without timestamps)
            ts = sorted(t for t in timestamps_ms if t is not None)
        ts = ts[bisect.bisect_right(ts, 0) :]
        counts, below = [], 0
        for bound in self.bounds:
            within = len(ts) - bisect.bisect_left(ts, now_ms - 1000 * bound)
            counts.append(within - below)
            below = within
        counts.append(len(ts) - below)
        past = bisect.bisect_right(ts, now_ms)  # the rest are in the future: age 0
        self._add(labels, counts, (past * now_ms - sum(ts[:past])) / 1000)

    def _add(self, labels: tuple[str, ...], counts: list[int], total: float) -> None:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes the labels {self.labelnames}, got {labels}")
        with self._lock:
            old_counts, old_total = self._series.get(labels) or ([0] * len(counts), 0.0)
            self._series[labels] = ([a + b for a, b in zip(old_counts, counts, strict=True)], old_total + total)

    def describe(self):
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self):
        with self._lock:
            series = list(self._series.items())
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, (counts, total) in series:
            cumulative, buckets = 0, []
            for bound, n in zip([*map(str, self.bounds), "+Inf"], counts, strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            family.add_metric(list(labels), buckets, sum_value=total)
        yield family


class ConsumerMetrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, *, max_services: int = 50, max_statuses: int = 20
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.service_label = LabelBounder(max_services)
        self.status_label = LabelBounder(max_statuses)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Info("tracker_consumer", "Version of the consumer process.", registry=r).info({"version": tracker.__version__})
        self.messages = Counter(
            "tracker_consumer_messages_total",
            "Kafka messages handled, by result: stored (new event), duplicate (event already stored), "
            "dead_lettered (invalid).",
            ["result"],
            registry=r,
        )
        self.invalid = Counter(
            "tracker_consumer_invalid_messages_total",
            "Invalid messages dead-lettered (recorded, then published to the dead-letter topic), by reason.",
            ["reason"],
            registry=r,
        )
        self.batches = Counter("tracker_consumer_batches_total", "Batches committed.", registry=r)
        self.batch_size = Histogram(
            "tracker_consumer_batch_size_messages", "Messages per batch.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.write_seconds = Histogram(
            "tracker_consumer_batch_write_seconds",
            "Time to write one batch to PostgreSQL (one transaction).",
            buckets=_WRITE_BUCKETS,
            registry=r,
        )
        self.event_lag = BatchHistogram(
            "tracker_consumer_event_lag_seconds",
            "From the Kafka record's timestamp to the commit of its batch in PostgreSQL.",
            _LAG_BUCKETS,
            r,
        )
        self.retries = Counter(
            "tracker_consumer_retries_total",
            "Retries after an infrastructure failure, by what failed.",
            ["target"],
            registry=r,
        )
        self.last_commit = Gauge(
            "tracker_consumer_last_commit_timestamp_seconds", "Unix time of the last offset commit.", registry=r
        )
        # Offsets are committed to Kafka up to TRACKER_COMMIT_INTERVAL_MS after the batch: this
        # is when the events became queryable.
        self.last_stored = Gauge(
            "tracker_consumer_last_stored_timestamp_seconds",
            "Unix time of the last batch's database commit.",
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "tracker_consumer_assigned_partitions", "Partitions currently assigned to this consumer.", registry=r
        )
        self.dead_letters_waiting = Gauge(
            "tracker_consumer_dead_letters_waiting",
            "1 while recorded dead letters wait to be published: the dead-letter topic refused one "
            "(see the log); they are listed by GET /v1/dead-letters meanwhile.",
            registry=r,
        )
        self.paused = Gauge(
            "tracker_consumer_paused", "1 while consumption waits for PostgreSQL or Kafka to come back.", registry=r
        )
        self.lag = Gauge(
            "tracker_consumer_lag_messages",
            "Messages in the partition not yet committed by this consumer group.",
            ["partition"],
            registry=r,
        )
        self.highwater = Gauge(
            "tracker_consumer_highwater_offset",
            "The partition's high-water mark: its rate is the produce rate.",
            ["partition"],
            registry=r,
        )
        # Business metrics: bounded labels only (see LabelBounder), never a trace or event id.
        self.events = Counter(
            "tracker_events_total", "New events stored, by service and status.", ["service", "status"], registry=r
        )
        self.service_elapsed = BatchHistogram(
            "tracker_service_elapsed_seconds",
            "Per service and trace: from its first event to its first outcome (success or error).",
            _ELAPSED_BUCKETS,
            r,
            ["service", "outcome"],
        )
        self.trace_elapsed = BatchHistogram(
            "tracker_trace_elapsed_seconds",
            "Per trace: from its first event to its finishing event.",
            _ELAPSED_BUCKETS,
            r,
            ["outcome"],
        )
        self.traces_finished = Counter(
            "tracker_traces_finished_total", "Traces finished, by outcome.", ["outcome"], registry=r
        )
        for outcome in ("success", "error"):
            self.traces_finished.labels(outcome)
        for result in ("stored", "duplicate", "dead_lettered"):
            self.messages.labels(result)
        for target in ("database", "kafka"):
            self.retries.labels(target)

    def record_batch(self, result) -> None:
        """The business metrics of one committed batch (an observation is made when a value
        first becomes known; a later out-of-order event does not retract it: the database
        rollups are the exact figures, these are for rates and alerting)."""
        for service, status, n in result.counts:
            self.events.labels(self.service_label(service), self.status_label(status)).inc(n)
        # One observe_many per series: the values of a batch counted together.
        values: dict[tuple[str, tuple[str, ...]], list[float]] = {}
        for kind, service, failed, seconds in result.elapsed:
            outcome = "error" if failed else "success"
            labels: tuple[str, ...] = (self.service_label(service), outcome) if kind == "service" else (outcome,)
            values.setdefault((kind, labels), []).append(seconds)
        for (kind, labels), series in values.items():
            if kind == "service":
                self.service_elapsed.observe_many(series, labels)
            else:
                self.trace_elapsed.observe_many(series, labels)
                self.traces_finished.labels(*labels).inc(len(series))
