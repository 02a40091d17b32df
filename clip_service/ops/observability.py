"""Request ids, one summary log line per request, and Prometheus counters, wired into the app."""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request

from . import metrics, request_context
from .logs import gcp_project, install_request_fields

log = logging.getLogger("clip_service.request")

REQUEST_ID_HEADER = "X-Request-ID"

# Probes and scrapes arrive every few seconds; their summary lines are noise.
_QUIET_ENDPOINTS = frozenset({"/health", "/health/live", "/health/ready", "/metrics",
                              "/.well-known/live", "/.well-known/ready"})  # Weaviate's probes (CLIP_WEAVIATE)


def record_batch(modality: str, size: int, seconds: float) -> None:
    """Embedder callback (from the batching thread): one forward pass of ``size`` items took ``seconds``."""
    metrics.BATCH_SIZE.labels(modality).observe(size)
    metrics.INFERENCE_SECONDS.labels(modality).observe(seconds)


def record_embedded(modality: str, n: int) -> None:
    """A request had ``n`` items of ``modality`` embedded."""
    metrics.ITEMS.labels(modality).inc(n)
    request_context.count_items(modality, n)


def record_fetched(nbytes: int, seconds: float) -> None:
    """Fetcher callback: one image of ``nbytes`` was downloaded and decoded in ``seconds``."""
    metrics.FETCH_BYTES.inc(nbytes)
    metrics.FETCH_SECONDS.observe(seconds)


def record_cache_lookup(modality: str, tier: str, result: str, n: int) -> None:
    """Cache callback: ``n`` lookups of ``modality`` in ``tier`` ended as ``result`` (hit or miss)."""
    metrics.CACHE_REQUESTS.labels(modality, tier, result).inc(n)
    if result == "hit":
        request_context.count_cache_hits(modality, n)


def record_cache_size(held: int, evicted: int) -> None:
    """Cache callback: the in-process tier holds ``held`` bytes after evicting ``evicted`` vectors."""
    metrics.CACHE_BYTES.set(held)
    if evicted:
        metrics.CACHE_EVICTIONS.inc(evicted)


def record_item_failures(codes) -> None:
    for code in codes:
        metrics.ITEM_FAILURES.labels(code).inc()
        request_context.count_failure(code)


def _begin() -> None:
    g.clip_started = time.perf_counter()
    request_context.begin(request.headers.get(REQUEST_ID_HEADER),
                          request.headers.get("X-Cloud-Trace-Context"), gcp_project())


def _finish(response: Response) -> Response:
    info = request_context.current()
    started = g.get("clip_started")
    if info is None or started is None:
        return response
    latency = time.perf_counter() - started
    # The route pattern, not the raw path, so junk URLs cannot explode label cardinality.
    endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
    response.headers[REQUEST_ID_HEADER] = info.request_id
    metrics.REQUESTS.labels(endpoint, str(response.status_code)).inc()
    metrics.LATENCY.labels(endpoint).observe(latency)
    if endpoint not in _QUIET_ENDPOINTS or response.status_code >= 400:
        log.info("%s %s %s", request.method, endpoint, response.status_code, extra={
            "endpoint": endpoint, "method": request.method, "status": response.status_code,
            "items": dict(info.items), "failures": dict(info.failures), "cache_hits": dict(info.cache_hits),
            "latency_ms": round(latency * 1000, 1), **({"key_id": info.key_id} if info.key_id else {})})
    return response


def _teardown(_exc) -> None:
    request_context.end()


def init_app(app: Flask) -> None:
    install_request_fields()
    app.before_request(_begin)
    app.after_request(_finish)
    app.teardown_request(_teardown)
    pipeline = app.extensions["clip_pipeline"]
    pipeline.on_embedded = record_embedded
    pipeline.on_failures = record_item_failures
    pipeline.fetcher.on_fetched = record_fetched
    pipeline.embedder.on_batch = record_batch
    cache = pipeline.cache
    cache.on_lookup = record_cache_lookup
    if cache.memory is not None:
        cache.memory.on_change = record_cache_size
    if cache.redis is not None:
        cache.redis.on_error = metrics.CACHE_ERRORS.inc
    if pipeline.embedder.load_seconds is not None:
        metrics.MODEL_LOAD_SECONDS.set(pipeline.embedder.load_seconds)
