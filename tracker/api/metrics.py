"""The API's Prometheus metrics and the ASGI middleware that records them."""

from __future__ import annotations

import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

import tracker
from tracker.api.routing import operation_id

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Info("tracker_api", "Version of the API process.", registry=r).info({"version": tracker.__version__})
        self.requests = Counter(
            "tracker_api_requests_total",
            "HTTP requests, by operation and status code.",
            ["operation", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "tracker_api_request_duration_seconds",
            "HTTP request latency, by operation.",
            ["operation"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.auth_refused = Counter(
            "tracker_api_auth_refused_total",
            "Requests refused by authentication (TRACKER_AUTH=on), by reason: missing, malformed, "
            "unknown, revoked, expired (401), scope (403), rate and concurrency (429).",
            ["reason"],
            registry=r,
        )
        # Labelled by host:port from DATABASE_READ_URLS: bounded by the configuration.
        self.replica_lag = Gauge(
            "tracker_api_replica_lag_seconds",
            "How far each read replica's replay is behind the primary, at the last check "
            "(NaN: it did not answer or has replayed nothing).",
            ["replica"],
            registry=r,
        )
        self.replica_in_use = Gauge(
            "tracker_api_replica_in_use",
            "1 when the replica serves reads, 0 when it is skipped (down, not a standby, lagging).",
            ["replica"],
            registry=r,
        )

    def observe_replica(self, name: str, lag_seconds: float | None, in_use: bool) -> None:
        self.replica_lag.labels(name).set(float("nan") if lag_seconds is None else lag_seconds)
        self.replica_in_use.labels(name).set(int(in_use))


class MetricsMiddleware:
    """Counts and times every request; the label is the handler's name from the spec's operationId
    (`tracker.api.traces.get_trace` -> `get_trace`), never the path: bounded by the spec."""

    def __init__(self, app, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        code = 500
        # Connexion's router shallow-copies the scope; a dict we create here is shared,
        # so the operation it routes to is visible to us afterwards.
        scope.setdefault("extensions", {})

        async def send_wrapper(message):
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            operation = _operation(scope)
            self.metrics.requests.labels(operation, str(code)).inc()
            self.metrics.latency.labels(operation).observe(time.perf_counter() - started)


def _operation(scope) -> str:
    routed = operation_id(scope)
    if routed:
        return routed.rsplit(".", 1)[-1]
    # Bounded: anything outside the spec's operations shares one label.
    return "other"
