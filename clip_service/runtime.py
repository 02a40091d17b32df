"""The pipeline the settings describe (model, fetcher, caches, batching): built the same way by the app and the bulk command."""

from __future__ import annotations

import dataclasses

from .cache.keys import WeightsIdentityInBackground
from .cache.redis_tier import RedisTier
from .cache.vectors import VectorCache
from .config import Settings
from .images.decoding import recycle_decode_memory
from .images.fetcher import FetchLimits, ImageFetcher
from .model.embedder import ClipEmbedder
from .pipeline import EmbeddingPipeline, cache_keys


def build_pipeline(settings: Settings, *, embedder: ClipEmbedder | None = None,
                   fetcher: ImageFetcher | None = None) -> EmbeddingPipeline:
    """Load the configured weights (unless ``embedder`` is given), configure batching, add the fetcher and caches.

    ``ModelLoadError`` propagates, so a process without usable weights refuses to start.
    """
    caching = bool(settings.cache_mb or settings.cache_redis_url)
    # Hashing a checkpoint takes about a second: started now, it runs beside the load.
    weights = WeightsIdentityInBackground(embedder.pretrained if embedder is not None else settings.pretrained) \
        if caching else None
    if embedder is None:
        embedder = ClipEmbedder.load(settings.model_name, settings.pretrained, settings.device,
                                     cache_dir=settings.cache_dir, max_batch=settings.max_batch,
                                     prepack=settings.onednn_prepack, precision=settings.precision)
    embedder.configure(parallel_forwards=settings.batch_runners, batching=settings.batching,
                       max_queue=settings.batch_max_queue, window_s=settings.batch_window_ms / 1000,
                       dwell_s=settings.batch_dwell_ms / 1000)
    if fetcher is None:
        fetcher = build_fetcher(settings, embedder)
        recycle_decode_memory(settings.decode_budget_mb << 20)
    cache = build_cache(settings, embedder, fetcher, weights.result()) if weights is not None else None
    return EmbeddingPipeline(embedder, fetcher, cache=cache, label_cache_bytes=settings.label_cache_mb << 20)


def build_fetcher(settings: Settings, embedder: ClipEmbedder) -> ImageFetcher:
    """The image fetcher with the settings' limits and the model's input size for JPEG draft decoding."""
    # Each limit is the setting of the same name, with or without the fetch_ prefix.
    names = {f.name: f"fetch_{f.name}" if hasattr(settings, f"fetch_{f.name}") else f.name
             for f in dataclasses.fields(FetchLimits)}
    limits = FetchLimits(**{name: getattr(settings, setting) for name, setting in names.items()})
    return ImageFetcher(limits, draft_size=embedder.input_size if settings.jpeg_draft else None)


def build_cache(settings: Settings, embedder: ClipEmbedder, fetcher: ImageFetcher, weights: str) -> VectorCache:
    """The vector cache, its keys naming everything that made a vector (a checkpoint file by its bytes)."""
    keys = cache_keys(embedder, weights=weights, draft_size=fetcher.draft_size)
    redis = RedisTier(settings.cache_redis_url, dimensions=embedder.dimensions, timeout=settings.cache_redis_timeout,
                      ttl=settings.cache_ttl_seconds) if settings.cache_redis_url else None
    return VectorCache(keys, max_bytes=settings.cache_mb << 20, redis=redis)
