"""The consumer's own histograms export what prometheus_client's would."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram

from consumer.metrics import _LAG_BUCKETS, BatchHistogram


def _exported(registry: CollectorRegistry, name: str) -> dict[str, float]:
    return {
        f"{s.name}{s.labels}": s.value
        for family in registry.collect()
        for s in family.samples
        if s.name.startswith(name) and not s.name.endswith("_created")
    }


def test_event_lag_from_timestamps_equals_one_observation_per_age():
    rng = random.Random(5)
    now_ms = 1_700_000_000_000
    for _ in range(50):
        timestamps: list[int | None] = [
            now_ms
            - rng.choice([0, 1, 4, 5, 6, 999, 1000, 1001, 59_999, 60_000, 10**7, 10**9])
            - rng.choice([0, 0, 0, 1])
            for _ in range(rng.randrange(0, 40))
        ]
        timestamps += rng.sample([now_ms + 500, 0, -1, None], rng.randrange(0, 5))  # future, and no timestamp
        rng.shuffle(timestamps)
        ours, reference = CollectorRegistry(), CollectorRegistry()
        BatchHistogram("lag", "", _LAG_BUCKETS, ours).observe_ages(timestamps, now_ms)
        histogram = Histogram("lag", "", buckets=_LAG_BUCKETS, registry=reference)
        for t in timestamps:
            if t is not None and t > 0:
                histogram.observe(max(0.0, (now_ms - t) / 1000))
        got, expected = _exported(ours, "lag"), _exported(reference, "lag")
        # The sum to float precision: ours adds the integer timestamps, the reference each age.
        assert got.pop("lag_sum{}") == pytest.approx(expected.pop("lag_sum{}"), rel=1e-12, abs=1e-9), timestamps
        assert got == expected, timestamps
