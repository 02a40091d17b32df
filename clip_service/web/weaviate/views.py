"""Weaviate's multi2vec-clip inference API at the root: POST /vectorize, GET /meta, GET /.well-known/{live,ready}.

The contract is Weaviate's own client (``modules/multi2vec-clip/clients/`` in
weaviate/weaviate) and the reference container it was written against
(weaviate/multi2vec-clip-inference, ``app.py``): a body ``{"texts", "images"}``
whose images are plain base64, an answer ``{"textVectors", "imageVectors"}``,
and on failure a status above 399 with ``{"error": "<message>"}``, which
Weaviate parses as JSON before it looks at the status. Weaviate cannot take a
partial answer, so one image that fails fails the request, naming its index
and code.

Weaviate sends no credentials and this module cannot be told to send any:
with API keys on, the /.well-known probes stay open, and /vectorize and /meta
need a key unless CLIP_WEAVIATE_PUBLIC (see PROBE_ENDPOINTS, API_ENDPOINTS).
"""

from __future__ import annotations

import logging

from flask import Flask, Response
from flask_smorest import Api, Blueprint

from ...pipeline import ItemFailure
from .. import current
from ..errors import ApiError
from ..flat_errors import at_most_described, field_errors, image_failure
from ..jsonio import JsonBodyParser, json_response
from ..openapi import add_error_response, error_docs
from .schemas import MetaSchema, VectorizeRequestSchema, VectorizeResponseSchema, WeaviateErrorSchema

log = logging.getLogger(__name__)

ERROR_RESPONSE = "WEAVIATE_ERROR"
# Exact paths, not a prefix: the routes sit at the root next to the service's own.
PATHS = ("/vectorize", "/meta", "/.well-known/live", "/.well-known/ready")
# Endpoint names for the API-key check (app.py): the probes are always open, the API only when public.
PROBE_ENDPOINTS = frozenset({"weaviate.live", "weaviate.ready"})
API_ENDPOINTS = frozenset({"weaviate.vectorize", "weaviate.meta"})
# Each image becomes a data URI so it takes the same road as any other in-request image
# (byte and pixel limits, allowed formats, batching, error codes). The decoder sniffs the
# bytes, so the declared type is only there to make a data URI: a JPEG works as well.
_DATA_URI_HEADER = "data:image/png;base64,"
# The data URI is ours, so the only way it can be invalid is its base64; say so in Weaviate's terms.
_MESSAGES = {"invalid_url": "the image is not valid base64"}

bp = Blueprint("weaviate", __name__, description=(
    "Weaviate's multi2vec-clip inference API (served with CLIP_WEAVIATE=true): point CLIP_INFERENCE_API "
    "or a collection's inferenceUrl here. Errors answer {\"error\": \"<message>\"}."))
# Weaviate before 1.26 sends the body with no Content-Type.
bp.ARGUMENTS_PARSER = JsonBodyParser(json_without_content_type=True)


def register(app: Flask, api: Api) -> None:
    """Serve the routes, answer their errors in Weaviate's shape, and document both."""
    add_error_response(api, ERROR_RESPONSE, WeaviateErrorSchema, "An error, in Weaviate's shape.")
    for path in PATHS:
        app.extensions["clip_error_renderers"].add(path, render_weaviate)
    api.register_blueprint(bp)
    if app.config["CLIP"].access.weaviate_public:
        log.warning("CLIP_WEAVIATE_PUBLIC is on: /vectorize and /meta answer without an API key; "
                    "keep this service on a private network")


def render_weaviate(error: ApiError) -> Response:
    """``error`` as ``{"error": "<message>"}``, field errors spelled out in the message."""
    message = error.message
    if error.errors:
        fields = [f"{path or 'body'}: {' '.join(map(str, messages))}" for path, messages in field_errors(error.errors)]
        message = "the request is not valid: " + "; ".join(at_most_described(fields))
    return json_response({"error": message}, status=error.status, headers=error.headers)


def _vectorize_failure(failures: list[ItemFailure]) -> ApiError:
    error = image_failure(failures, "images", lead="could not use ", messages=_MESSAGES)
    if all(f.error.code == "fetch_timeout" for f in failures):
        # Only a busy worker times out on an image in the body: retrying may succeed.
        return ApiError(503, error.message, headers={"Retry-After": "1"})
    return error


# Answers not listed are in Weaviate's shape too, not the service's envelope.
_documents_errors = error_docs(bp, WeaviateErrorSchema, {
    400: "The body is not JSON, or an image could not be used (the message names images[i] and its code: "
         "invalid_url for bad base64, not_an_image, unsupported_format, too_large, decode_failed).",
    413: "The body is larger than CLIP_MAX_BODY_BYTES.",
    415: "The Content-Type is neither absent nor application/json (UTF-8).",
    422: "The JSON is not a valid request (too many texts or images, a text too long, a wrong type).",
    503: "The model is not ready (ready), or the worker is too busy (vectorize).",
}, default=ERROR_RESPONSE)


@bp.route("/vectorize", methods=["POST"])
@bp.arguments(VectorizeRequestSchema)
@bp.response(200, VectorizeResponseSchema)
@_documents_errors(400, 413, 415, 422, 503)
def vectorize(body):
    """Embed texts and base64 images; all or nothing, as Weaviate cannot take a partial answer.

    A body with neither answers empty lists, as the reference container does
    (Weaviate itself never sends one).
    """
    sources = [_DATA_URI_HEADER + image for image in body["images"]]
    texts, images = current.pipeline().embed_mixed(body["texts"], sources, all_or_none=True)
    if images.failures:
        raise _vectorize_failure(images.failures)
    return json_response({"textVectors": texts.vectors, "imageVectors": images.vectors})


@bp.route("/meta", methods=["GET"])
@bp.response(200, MetaSchema)
@_documents_errors()
def meta():
    """Describe the model (Weaviate shows this under its own /v1/meta)."""
    info = current.pipeline().info
    return json_response({"model_name": info.model, "pretrained": info.pretrained, "dimensions": info.dimensions,
                          "precision": info.precision, "scores": current.pipeline().scores})


@bp.route("/.well-known/live", methods=["GET"])
@bp.response(204)
@_documents_errors()
def live():
    """Liveness: the process answers HTTP (no model work)."""
    return Response(status=204)


@bp.route("/.well-known/ready", methods=["GET"])
@bp.response(204)
@_documents_errors(503)
def ready():
    """Readiness, cheap (Weaviate allows 500 ms): loaded, warmed up, and the last readiness inference did not fail."""
    if not current.readiness().healthy():
        raise ApiError(503, "the model is not ready: its warm-up or the last readiness inference failed "
                            "(see /health)")
    return Response(status=204)
