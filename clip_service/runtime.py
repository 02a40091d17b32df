"""The pipeline the settings describe (model, fetcher, caches, batching): built the same way by the app and the bulk command."""

from __future__ import annotations

from .cache.keys import WeightsIdentityInBackground
from .cache.redis_tier import RedisTier
from .cache.vectors import VectorCache
from .config import Settings
from .images.decoding import recycle_decode_memory
from .images.fetcher import ImageFetcher
from .model.embedder import ClipEmbedder
from .pipeline import EmbeddingPipeline, cache_keys


def build_pipeline(settings: Settings, *, embedder: ClipEmbedder | None = None,
                   fetcher: ImageFetcher | None = None) -> EmbeddingPipeline:
    """Load the configured weights (unless ``embedder`` is given), configure batching, add the fetcher and caches.

    ``ModelLoadError`` propagates, so a process without usable weights refuses to start.
    """
    model, batching, cache = settings.model, settings.batching, settings.cache
    caching = bool(cache.mb or cache.redis_url)
    # Hashing a checkpoint takes about a second: started now, it runs beside the load.
    weights = WeightsIdentityInBackground(embedder.pretrained if embedder is not None else model.pretrained) \
        if caching else None
    if embedder is None:
        embedder = ClipEmbedder.load(model.name, model.pretrained, model.device, cache_dir=model.cache_dir,
                                     max_batch=batching.max_batch, prepack=model.onednn_prepack,
                                     precision=model.precision, tokenizer_dir=model.tokenizer)
    embedder.configure(parallel_forwards=batching.runners, batching=batching.enabled, max_queue=batching.max_queue,
                       window_s=batching.window_ms / 1000, dwell_s=batching.dwell_ms / 1000)
    if fetcher is None:
        # The model's input side is what a reduced-scale JPEG decode must still cover.
        fetcher = ImageFetcher(settings.fetch, draft_size=embedder.input_size)
        recycle_decode_memory(settings.fetch.decode_budget_mb << 20)
    vectors = build_cache(settings, embedder, fetcher, weights.result()) if weights is not None else None
    return EmbeddingPipeline(embedder, fetcher, cache=vectors, label_cache_bytes=cache.label_mb << 20)


def build_cache(settings: Settings, embedder: ClipEmbedder, fetcher: ImageFetcher, weights: str) -> VectorCache:
    """The vector cache, its keys naming everything that made a vector (a checkpoint file by its bytes)."""
    cache = settings.cache
    keys = cache_keys(embedder, weights=weights, draft_size=fetcher.draft_size)
    redis = RedisTier(cache.redis_url, dimensions=embedder.dimensions, timeout=cache.redis_timeout,
                      ttl=cache.ttl_seconds) if cache.redis_url else None
    return VectorCache(keys, max_bytes=cache.mb << 20, redis=redis)
