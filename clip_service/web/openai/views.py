"""The OpenAI-compatible API: POST /v1/embeddings and GET /v1/models, errors in OpenAI's shape.

Errors under /v1 are ``{"error": {"message", "type", "param", "code"}}``,
rendered from the same ``ApiError`` as the service's envelope, so the two
APIs can never disagree about what went wrong. Request validation answers
400 here, as OpenAI does, instead of the service's 422.
"""

from __future__ import annotations

import time

from flask import Flask, Response
from flask_smorest import Api, Blueprint

from ...encodings import by_types
from ...pipeline import ModelInfo
from .. import current
from ..common_schemas import dimensions_refusal
from ..errors import ApiError
from ..flat_errors import field_errors, image_failure
from ..jsonio import JsonBodyParser, json_response
from ..openapi import add_error_response, error_docs
from .schemas import (
    EMBEDDING_EXAMPLES,
    EmbeddingListSchema,
    EmbeddingRequestSchema,
    ModelListSchema,
    ModelSchema,
    OpenAIErrorSchema,
    is_image_input,
)

PREFIX = "/v1"
ERROR_RESPONSE = "OPENAI_ERROR"
# OpenAI's model objects say when they were created; here, when this process started.
_CREATED = int(time.time())
# OpenAI's ``code`` for errors that have no more specific one.
_CODES = {400: "invalid_request", 401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed",
          413: "request_too_large", 415: "unsupported_media_type", 500: "internal_error", 503: "overloaded"}

bp = Blueprint("openai", __name__, url_prefix=PREFIX,
               description="OpenAI-compatible embeddings: works with the openai package and its kin.")
bp.ARGUMENTS_PARSER = JsonBodyParser()  # 415/400 for bodies that are not UTF-8 JSON


def register(app: Flask, api: Api) -> None:
    """Register the blueprint on ``api``: its error shape for every path under /v1, and in the document."""
    add_error_response(api, ERROR_RESPONSE, OpenAIErrorSchema, "An error, in OpenAI's shape.")
    app.extensions["clip_error_renderers"].add(PREFIX, render_openai)
    api.register_blueprint(bp)


def render_openai(error: ApiError) -> Response:
    """``error`` in OpenAI's shape; the first field error becomes ``param`` and the message."""
    status = 400 if error.status == 422 else error.status
    message, param = error.message, error.param
    found = field_errors(error.errors) if param is None else []
    if found:
        path, messages = found[0]
        param, detail = path or None, messages[0] if messages else ""
        message = detail if param is None else f"Invalid '{param}': {detail}"
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": error.code or _CODES.get(status)}}
    return json_response(body, status=status, headers=error.headers)


# Answers not listed are in OpenAI's shape too, not the service's envelope.
_documents_errors = error_docs(bp, OpenAIErrorSchema, {
    400: "The body is not JSON or not a valid request (field by field in param), dimensions is not "
         "the model's, or an image failed (param names it, code says why).",
    404: "The model is not the one this service serves.",
    413: "The body is larger than CLIP_MAX_BODY_BYTES.",
    415: "The Content-Type is not application/json (UTF-8).",
}, default=ERROR_RESPONSE)


def _model(info: ModelInfo) -> dict:
    return {"id": info.model, "object": "model", "created": _CREATED, "owned_by": "clip-service",
            "scores": current.pipeline().scores,
            "pretrained": info.pretrained, "dimensions": info.dimensions, "precision": info.precision}


def _check_model(model: str, info: ModelInfo) -> None:
    if model != info.model:
        # OpenAI's answer to a model it does not have; the name sent is not echoed.
        raise ApiError(404, f"The model does not exist here; this service serves {info.model!r} "
                            "(see GET /v1/models).", param="model", code="model_not_found")


@bp.route("/embeddings", methods=["POST"])
@bp.arguments(EmbeddingRequestSchema)
@bp.response(200, EmbeddingListSchema, examples=EMBEDDING_EXAMPLES)
@_documents_errors(400, 404, 413, 415)
def create_embeddings(body):
    """Embed texts and images (OpenAI's embeddings API); the vectors come back in input order."""
    pipeline = current.pipeline()
    info = pipeline.info
    _check_model(body["model"], info)
    if body.get("dimensions") not in (None, info.dimensions):
        # 400, as every invalid request under /v1 (OpenAI's status; the openai package raises BadRequestError).
        raise ApiError(400, dimensions_refusal(info.dimensions), param="dimensions", code="unsupported_dimensions")
    inputs, modality = body["input"], body.get("modality")
    embedded = pipeline.embed_inputs(inputs, [is_image_input(item, modality) for item in inputs], all_or_none=True)
    if embedded.failures:
        # OpenAI has no per-item errors: one failed image fails the request, naming each failure.
        raise image_failure(embedded.failures, "input", lead="Could not use the image at ")
    data = [{"object": "embedding", "index": i, "embedding": vector}
            for i, vector in enumerate(by_types(embedded.vectors, body["embedding_types"]))]
    return json_response({"object": "list", "data": data, "model": info.model,
                          "usage": {"prompt_tokens": embedded.tokens, "total_tokens": embedded.tokens}})


@bp.route("/models", methods=["GET"])
@bp.response(200, ModelListSchema)
@_documents_errors()
def list_models():
    """List the model this service serves (one per process)."""
    return json_response({"object": "list", "data": [_model(current.pipeline().info)]})


@bp.route("/models/<path:model>", methods=["GET"])
@bp.response(200, ModelSchema)
@_documents_errors(404)
def retrieve_model(model):
    """Describe the model this service serves."""
    info = current.pipeline().info
    _check_model(model, info)
    return json_response(_model(info))
