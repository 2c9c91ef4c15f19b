"""``GET /metrics``: Prometheus text for requests, errors, latency and batch sizes (one registry per app)."""

from __future__ import annotations

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("ocrvl_requests_total", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=self.registry)
        self.errors = Counter("ocrvl_request_errors_total", "Requests answered with a 4xx/5xx status, by route and status",
                              ["route", "status"], registry=self.registry)
        self.latency = Histogram("ocrvl_request_latency_seconds", "Time from request to answer, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("ocrvl_batch_size", "Jobs per model call (micro-batching)",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_seconds = Histogram("ocrvl_batch_seconds", "Seconds per model call",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("ocrvl_requests_in_flight", "Model requests admitted and not yet answered",
                               registry=self.registry)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        if status >= 400:
            self.errors.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def text(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
