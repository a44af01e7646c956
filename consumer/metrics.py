"""The consumer's Prometheus metrics: one registry, built by the process, passed in."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry, Counter, Gauge, Histogram, Info, PlatformCollector, ProcessCollector,
)

import tracker

# From a 1 ms write to a slow one under load; event lag up to hours (a backlog).
_WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)
_BATCH_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Info("tracker_consumer", "Version of the consumer process.", registry=r).info(
            {"version": tracker.__version__})
        self.messages = Counter(
            "tracker_consumer_messages_total",
            "Kafka messages handled, by result: stored (new event), duplicate (event already stored), "
            "dead_lettered (invalid).", ["result"], registry=r)
        self.invalid = Counter(
            "tracker_consumer_invalid_messages_total",
            "Invalid messages sent to the dead-letter topic, by reason.", ["reason"], registry=r)
        self.batches = Counter("tracker_consumer_batches_total", "Batches committed.", registry=r)
        self.batch_size = Histogram("tracker_consumer_batch_size_messages", "Messages per batch.",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.write_seconds = Histogram("tracker_consumer_batch_write_seconds",
                                       "Time to write one batch to PostgreSQL (one transaction).",
                                       buckets=_WRITE_BUCKETS, registry=r)
        self.event_lag = Histogram("tracker_consumer_event_lag_seconds",
                                   "From the Kafka record's timestamp to the commit of its batch in PostgreSQL.",
                                   buckets=_LAG_BUCKETS, registry=r)
        self.retries = Counter("tracker_consumer_retries_total",
                               "Retries after an infrastructure failure, by what failed.", ["target"],
                               registry=r)
        self.last_commit = Gauge("tracker_consumer_last_commit_timestamp_seconds",
                                 "Unix time of the last offset commit.", registry=r)
        self.assigned_partitions = Gauge("tracker_consumer_assigned_partitions",
                                         "Partitions currently assigned to this consumer.", registry=r)
        self.paused = Gauge("tracker_consumer_paused",
                            "1 while consumption waits for PostgreSQL or Kafka to come back.", registry=r)
        for result in ("stored", "duplicate", "dead_lettered"):
            self.messages.labels(result)
        for target in ("database", "kafka"):
            self.retries.labels(target)
