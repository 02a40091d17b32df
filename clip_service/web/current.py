"""The running app's settings and pipeline, for views and schemas (made once by the factory)."""

from __future__ import annotations

from flask import current_app

from ..config import Settings
from ..pipeline import EmbeddingPipeline


def settings() -> Settings:
    return current_app.config["CLIP"]


def pipeline() -> EmbeddingPipeline:
    return current_app.extensions["clip_pipeline"]
