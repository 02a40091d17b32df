"""GET /metrics: Prometheus text format, summed over all Gunicorn workers."""

from __future__ import annotations

from flask import Response
from flask_smorest import Blueprint

from ..ops import metrics

bp = Blueprint("metrics", __name__, description="Prometheus metrics.")


@bp.route("/metrics", methods=["GET"])
@bp.doc(responses={"200": {"description": "Prometheus text exposition format.",
                           "content": {"text/plain": {"schema": {"type": "string"}}}}})
def scrape():
    """Metrics for all workers of this instance."""
    body, content_type = metrics.render()
    return Response(body, mimetype=content_type.split(";")[0], content_type=content_type)
