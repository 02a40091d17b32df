"""GET /health, /health/live and /health/ready, and the one answer shape they share."""

from __future__ import annotations

from flask_smorest import Blueprint
from marshmallow import Schema, fields

from ..ops.readiness import Readiness
from . import current
from .common_schemas import precision_field
from .jsonio import json_response

bp = Blueprint("health", __name__, description="Is the model loaded and serving? (No API key needed.)")
# Platform probes send no credentials.
_OPEN = {"security": []}


class HealthSchema(Schema):
    status = fields.String(required=True, metadata={
        "description": "/health: healthy or unhealthy; /health/live: alive; /health/ready: ready or unready."})
    model_loaded = fields.Boolean(required=True, metadata={"description": "Whether this worker holds the model."})
    precision = precision_field()  # absent while the worker holds no model


def _answer(ok: bool, status: str, readiness: Readiness):
    body = {"status": status, "model_loaded": readiness.model_loaded}
    if readiness.model_loaded:
        # The arithmetic the vectors are made in, for whoever compares them with open_clip's.
        body["precision"] = readiness.embedder.precision
    return json_response(body, status=200 if ok else 503)


@bp.route("/health", methods=["GET"])
@bp.doc(**_OPEN)
@bp.response(200, HealthSchema)
@bp.alt_response(503, schema=HealthSchema, description="No model, its warm-up failed, or the last readiness "
                                                       "inference failed.")
def health():
    """Report whether this worker can serve (cheap: no inference; use /health/ready for the startup probe)."""
    readiness = current.readiness()
    ok = readiness.healthy()
    return _answer(ok, "healthy" if ok else "unhealthy", readiness)


@bp.route("/health/live", methods=["GET"])
@bp.doc(**_OPEN)
@bp.response(200, HealthSchema)
def live():
    """Liveness: the process answers HTTP (no model work)."""
    return _answer(True, "alive", current.readiness())


@bp.route("/health/ready", methods=["GET"])
@bp.doc(**_OPEN)
@bp.response(200, HealthSchema)
@bp.alt_response(503, schema=HealthSchema, description="Inference failed or the model is wedged.")
def ready():
    """Readiness: a tiny real inference succeeded within the last few seconds."""
    readiness = current.readiness()
    ok = readiness()
    return _answer(ok, "ready" if ok else "unready", readiness)
