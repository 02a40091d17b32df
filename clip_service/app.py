"""The application factory."""

from __future__ import annotations

from typing import Any, Mapping

from flask import Flask

from .config import SETTING_KEYS, Settings
from .images.fetcher import ImageFetcher
from .model.embedder import ClipEmbedder
from .ops import observability
from .ops.logs import configure_logging
from .ops.readiness import Readiness
from .runtime import build_pipeline
from .web.auth import ApiKeyGate, warn_if_open
from .web.errors import register_error_handlers
from .web.jsonio import OrjsonProvider
from .web.openapi import create_api


def create_app(test_config: Mapping[str, Any] | None = None, *, settings: Settings | None = None,
               embedder: ClipEmbedder | None = None, fetcher: ImageFetcher | None = None) -> Flask:
    """Create the service: ``settings`` (else read from the environment), then ``test_config``; load the model.

    Keys of ``test_config`` that name a setting (``max_texts``, ``fetch_allow``)
    override it; the rest go to ``app.config``. Tests may pass their own
    ``embedder`` or ``fetcher``; otherwise the configured weights are loaded,
    and ``ModelLoadError`` propagates so the process refuses to start.
    """
    test_config = dict(test_config or {})
    overrides = {key: test_config.pop(key) for key in list(test_config) if key in SETTING_KEYS}
    if settings is None:
        settings = Settings.from_env(**overrides)
    elif overrides:
        settings = settings.replace(**overrides)
        settings.validate()

    app = Flask(__name__)
    app.json = OrjsonProvider(app)
    app.config.update(CLIP=settings, MAX_CONTENT_LENGTH=settings.limits.max_body_bytes)
    app.config.update(test_config)
    if not app.testing:
        configure_logging(settings.server.log_level)

    pipeline = build_pipeline(settings, embedder=embedder, fetcher=fetcher)
    embedder = pipeline.embedder
    app.extensions["clip_embedder"] = embedder
    app.extensions["clip_pipeline"] = pipeline
    app.extensions["clip_readiness"] = Readiness(embedder, ttl=settings.server.ready_cache_seconds,
                                                 timeout=settings.server.ready_timeout)

    api = create_api(app, settings)
    register_error_handlers(app)
    from .web import demo, docs, health, metrics
    from .web.embed import views as embed
    from .web.openai import views as openai
    from .web.zeroshot import views as zeroshot

    api.register_blueprint(embed.bp)
    api.register_blueprint(health.bp)
    api.register_blueprint(metrics.bp)
    api.register_blueprint(zeroshot.bp)
    openai.register(app, api)
    # The HTML pages are not API endpoints: registered on the app, they stay out of the OpenAPI document.
    app.register_blueprint(demo.bp)
    app.register_blueprint(docs.bp)
    if settings.access.weaviate:
        from .web.weaviate import views as weaviate

        weaviate.register(app, api)
    observability.init_app(app)
    _require_api_keys(app, settings)
    return app


def _require_api_keys(app: Flask, settings: Settings) -> None:
    # After observability's hook, so a refused request still gets its id and log line.
    public = {"health.health", "health.live", "health.ready"}
    access = settings.access
    if access.public_metrics:
        public.add("metrics.scrape")
    if access.weaviate:
        from .web.weaviate import views as weaviate

        # Probes never carry credentials; Weaviate itself cannot send a key either.
        public |= weaviate.PROBE_ENDPOINTS | (weaviate.API_ENDPOINTS if access.weaviate_public else set())
    gate = ApiKeyGate(settings.api_key_list(), public_endpoints=public,
                      public_blueprints={"api-docs", "docs", "demo"} if access.public_docs else set(),
                      count_by_key=not access.public_metrics)
    app.extensions["clip_api_keys"] = gate
    app.before_request(gate.check)
    warn_if_open(gate)

