"""Prometheus metrics, aggregated across Gunicorn workers.

Under Gunicorn, ``gunicorn.conf.py`` points ``PROMETHEUS_MULTIPROC_DIR`` at a
fresh directory before this module is imported, so every worker writes its
samples there and ``/metrics`` (answered by any one worker) sums them all.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client import REGISTRY as _DEFAULT_REGISTRY

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

REQUESTS = Counter("clip_http_requests_total", "HTTP requests by endpoint and status.",
                   ["endpoint", "status"])
LATENCY = Histogram("clip_http_request_duration_seconds", "Request latency by endpoint.",
                    ["endpoint"], buckets=_LATENCY_BUCKETS)
ITEMS = Counter("clip_items_embedded_total", "Items embedded, by modality.", ["modality"])
ITEM_FAILURES = Counter("clip_item_failures_total", "Per-item failures (failed images), by code.", ["code"])
BATCH_SIZE = Histogram("clip_batch_size", "Items per forward pass, by modality.", ["modality"],
                       buckets=_BATCH_BUCKETS)
INFERENCE_SECONDS = Histogram("clip_inference_duration_seconds", "Model time per batch, by modality.",
                              ["modality"], buckets=_LATENCY_BUCKETS)
MODEL_LOAD_SECONDS = Gauge("clip_model_load_seconds", "Seconds taken to load the model weights.",
                           multiprocess_mode="max")
CONNECTIONS_DROPPED = Counter("clip_connections_dropped_total",
                              "Connections closed before their request had all arrived, by reason.", ["reason"])
FETCH_BYTES = Counter("clip_fetch_bytes_total", "Image bytes downloaded.")
FETCH_SECONDS = Histogram("clip_fetch_duration_seconds", "Time to fetch and decode one image.",
                          buckets=_LATENCY_BUCKETS)
CACHE_REQUESTS = Counter("clip_cache_requests_total", "Vector cache lookups by modality, tier and result.",
                         ["modality", "tier", "result"])
CACHE_BYTES = Gauge("clip_cache_bytes", "Bytes held by the in-process vector caches.", multiprocess_mode="livesum")
CACHE_EVICTIONS = Counter("clip_cache_evictions_total", "Vectors evicted from the in-process cache.")
CACHE_ERRORS = Counter("clip_cache_redis_errors_total", "Redis calls that failed or timed out (each a miss).")
AUTH_FAILURES = Counter("clip_auth_failures_total", "Requests refused for a missing or wrong API key.", ["reason"])
REQUESTS_BY_KEY = Counter("clip_requests_by_key_total",
                          "Requests by API key id (only while /metrics itself needs a key).", ["key_id"])


def render() -> tuple[bytes, str]:
    """The exposition text for all workers (or this process when not under Gunicorn)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = _DEFAULT_REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST
