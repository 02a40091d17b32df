"""The application factory."""

from __future__ import annotations

from typing import Any, Mapping

from flask import Flask

from .config import Settings
from .images.fetcher import ImageFetcher
from .model.embedder import ClipEmbedder
from .ops import observability
from .ops.logs import configure_logging
from .ops.readiness import Readiness
from .runtime import build_pipeline
from .web.errors import register_error_handlers
from .web.jsonio import OrjsonProvider
from .web.openapi import create_api


def create_app(test_config: Mapping[str, Any] | None = None, *, embedder: ClipEmbedder | None = None,
               fetcher: ImageFetcher | None = None) -> Flask:
    """Create the service: settings from the environment, then ``test_config``; load the model.

    Keys of ``test_config`` that name a ``Settings`` field override that
    setting; the rest go to ``app.config``. Tests may pass their own
    ``embedder`` or ``fetcher``; otherwise the configured weights are loaded,
    and ``ModelLoadError`` propagates so the process refuses to start.
    """
    test_config = dict(test_config or {})
    setting_names = set(Settings.__dataclass_fields__)
    settings = Settings.from_env(**{k: test_config.pop(k) for k in list(test_config) if k in setting_names})

    app = Flask(__name__)
    app.json = OrjsonProvider(app)
    app.config.update(CLIP=settings, MAX_CONTENT_LENGTH=settings.max_body_bytes)
    app.config.update(test_config)
    if not app.testing:
        configure_logging(settings.log_level)

    pipeline = build_pipeline(settings, embedder=embedder, fetcher=fetcher)
    embedder = pipeline.embedder
    app.extensions["clip_embedder"] = embedder
    app.extensions["clip_pipeline"] = pipeline
    app.extensions["clip_readiness"] = Readiness(embedder, ttl=settings.ready_cache_seconds,
                                                 timeout=settings.ready_timeout)

    api = create_api(app, settings)
    register_error_handlers(app)
    from .web import embed, health, metrics
    from .web.openai import views as openai_views

    api.register_blueprint(embed.bp)
    api.register_blueprint(health.bp)
    api.register_blueprint(metrics.bp)
    openai_views.register(app, api)
    observability.init_app(app)
    return app
