"""The API's Prometheus metrics (`GET /metrics`): requests by route and status (every
status, counted by `starsrec.web.http_guard.ObservedRequests`), latencies, index size and
events stored."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Prometheus metrics in a registry of their own (one per app, so tests stay apart)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "starsrec_requests", "HTTP requests", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "starsrec_request_seconds",
            "request latency",
            ["route"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0),
            registry=self.registry,
        )
        self.index_size = Gauge(
            "starsrec_index_items", "items in the index", registry=self.registry
        )
        self.events = Counter("starsrec_events_stored", "new events stored", registry=self.registry)
