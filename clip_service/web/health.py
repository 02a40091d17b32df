"""GET /health, /health/live and /health/ready."""

from __future__ import annotations

from flask import current_app
from flask_smorest import Blueprint

from .jsonio import json_response
from .schemas import HealthSchema

bp = Blueprint("health", __name__, description="Is the model loaded and serving?")


def _answer(ok: bool, body: dict):
    return json_response(body, status=200 if ok else 503)


@bp.route("/health", methods=["GET"])
@bp.response(200, HealthSchema)
@bp.alt_response(503, schema=HealthSchema, description="The model is not usable.")
def health():
    """Report whether the model is loaded (cheap; use for the startup probe)."""
    loaded = current_app.extensions.get("clip_embedder") is not None
    return _answer(loaded, {"status": "healthy" if loaded else "unhealthy", "model_loaded": loaded})


@bp.route("/health/live", methods=["GET"])
@bp.response(200, HealthSchema)
def live():
    """Liveness: the process answers HTTP (no model work)."""
    loaded = current_app.extensions.get("clip_embedder") is not None
    return _answer(True, {"status": "alive", "model_loaded": loaded})


@bp.route("/health/ready", methods=["GET"])
@bp.response(200, HealthSchema)
@bp.alt_response(503, schema=HealthSchema, description="Inference failed or the model is wedged.")
def ready():
    """Readiness: a tiny real inference succeeded within the last few seconds."""
    ok = current_app.extensions["clip_readiness"]()
    loaded = current_app.extensions.get("clip_embedder") is not None
    return _answer(ok, {"status": "ready" if ok else "unready", "model_loaded": loaded})
