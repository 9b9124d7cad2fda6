"""Prometheus metrics of one service, in their own registry (two apps in one process never collide)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Request counts and latencies per route, batch sizes, ingest queue depth, tokens ingested, cache bytes.

    Args:
        queue_depth: jobs queued or running, read at scrape time.
        cache_bytes: bytes of decoded token matrices cached, read at scrape time.
    """

    def __init__(self, queue_depth: Callable[[], float], cache_bytes: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "chunkless_requests_total", "HTTP requests by route and status", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "chunkless_request_seconds",
            "HTTP request latency by route",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "chunkless_search_batch_size", "Queries per search_batch call", buckets=BATCH_BUCKETS, registry=r
        )
        self.tokens = Counter("chunkless_ingested_tokens_total", "Tokens stored by ingest jobs", registry=r)
        Gauge("chunkless_ingest_queue_depth", "Ingest jobs queued or running", registry=r).set_function(queue_depth)
        Gauge("chunkless_cache_bytes", "Bytes of decoded token matrices in the cache", registry=r).set_function(
            cache_bytes
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One finished request."""
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
