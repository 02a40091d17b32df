"""The running app's settings, pipeline and readiness, for views and schemas (made once by the factory)."""

from __future__ import annotations

from dataclasses import asdict

from flask import current_app

from ..config import Settings
from ..ops.readiness import Readiness
from ..pipeline import EmbeddingPipeline


def settings() -> Settings:
    return current_app.config["CLIP"]


def pipeline() -> EmbeddingPipeline:
    return current_app.extensions["clip_pipeline"]


def readiness() -> Readiness:
    return current_app.extensions["clip_readiness"]


def model_info() -> dict:
    """The model fields every embedding answer carries: model, pretrained, dimensions, precision."""
    return asdict(pipeline().info)
