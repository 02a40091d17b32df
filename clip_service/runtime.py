"""The pipeline the settings describe (model, fetcher, batching): built the same way by the app and the bulk command."""

from __future__ import annotations

import dataclasses

from .config import Settings
from .images.fetcher import FetchLimits, ImageFetcher
from .model.embedder import ClipEmbedder
from .pipeline import EmbeddingPipeline


def build_pipeline(settings: Settings, *, embedder: ClipEmbedder | None = None,
                   fetcher: ImageFetcher | None = None) -> EmbeddingPipeline:
    """Load the configured weights (unless ``embedder`` is given), configure batching, and add the fetcher.

    ``ModelLoadError`` propagates, so a process without usable weights refuses to start.
    """
    if embedder is None:
        embedder = ClipEmbedder.load(settings.model_name, settings.pretrained, settings.device,
                                     cache_dir=settings.cache_dir, max_batch=settings.max_batch,
                                     prepack=settings.onednn_prepack)
    embedder.configure(parallel_forwards=settings.batch_runners, batching=settings.batching,
                       max_queue=settings.batch_max_queue, window_s=settings.batch_window_ms / 1000)
    return EmbeddingPipeline(embedder, fetcher or build_fetcher(settings, embedder))


def build_fetcher(settings: Settings, embedder: ClipEmbedder) -> ImageFetcher:
    """The image fetcher with the settings' limits and the model's input size for JPEG draft decoding."""
    # Each limit is the setting of the same name, with or without the fetch_ prefix.
    names = {f.name: f"fetch_{f.name}" if hasattr(settings, f"fetch_{f.name}") else f.name
             for f in dataclasses.fields(FetchLimits)}
    limits = FetchLimits(**{name: getattr(settings, setting) for name, setting in names.items()})
    return ImageFetcher(limits, draft_size=embedder.input_size if settings.jpeg_draft else None)
