"""GET /health."""

from __future__ import annotations

from flask import current_app
from flask_smorest import Blueprint

from ..jsonio import json_response
from ..schemas import HealthSchema

bp = Blueprint("health", __name__, description="Is the model loaded and serving?")


@bp.route("/health", methods=["GET"])
@bp.response(200, HealthSchema)
@bp.alt_response(503, schema=HealthSchema, description="The model is not usable.")
def health():
    """Report whether the model is loaded."""
    loaded = current_app.extensions.get("clip_embedder") is not None
    body = {"status": "healthy" if loaded else "unhealthy", "model_loaded": loaded}
    return json_response(body, status=200 if loaded else 503)
