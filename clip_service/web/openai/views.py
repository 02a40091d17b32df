"""The OpenAI-compatible API: POST /v1/embeddings and GET /v1/models, errors in OpenAI's shape."""

from __future__ import annotations

import time

from apispec.ext.marshmallow import MarshmallowPlugin
from flask import current_app
from flask_smorest import Api, Blueprint

from ...config import Settings
from ...images.fetcher import FetchError, ImageFetcher
from ...model.embedder import ClipEmbedder
from ...ops.observability import record_embedded, record_item_failures
from ..jsonio import JsonBodyParser, json_response
from .errors import PREFIX, OpenAIError
from .format import count_tokens, encode_vector
from .schemas import (
    EmbeddingInput,
    EmbeddingListSchema,
    EmbeddingRequestSchema,
    ModelListSchema,
    ModelSchema,
    OpenAIErrorSchema,
    is_image_input,
)

ERROR_RESPONSE = "OPENAI_ERROR"
# OpenAI's model objects say when they were created; here, when this process started.
_CREATED = int(time.time())
# At most this many failed images are described in one error message.
_MAX_DESCRIBED = 5


class OpenAIBlueprint(Blueprint):
    """A blueprint whose undocumented error answers are documented in OpenAI's shape, not the envelope."""

    @staticmethod
    def _prepare_response_doc(doc, doc_info, *, api, spec, **kwargs):
        doc = Blueprint._prepare_response_doc(doc, doc_info, api=api, spec=spec, **kwargs)
        doc["responses"]["default"] = ERROR_RESPONSE
        return doc


bp = OpenAIBlueprint("openai", __name__, url_prefix=PREFIX,
                     description="OpenAI-compatible embeddings: works with the openai package and its kin.")
bp.ARGUMENTS_PARSER = JsonBodyParser()  # 415/400 for bodies that are not UTF-8 JSON


def register(api: Api, settings: Settings) -> None:
    """Register the blueprint on ``api``, with the OpenAPI pieces only this API uses."""
    api.spec.components.response(ERROR_RESPONSE, {
        "description": "An error, in OpenAI's shape.",
        "content": {"application/json": {"schema": OpenAIErrorSchema}}})
    plugin = next(p for p in api.spec.plugins if isinstance(p, MarshmallowPlugin))

    def input_schema(converter, field, **kwargs) -> dict:
        return field.openapi(settings) if isinstance(field, EmbeddingInput) else {}

    plugin.converter.add_attribute_function(input_schema)
    api.register_blueprint(bp)


def _documents_errors(*statuses):
    descriptions = {
        400: "The body is not JSON or not a valid request (field by field in param), dimensions is not "
             "the model's, or an image failed (param names it, code says why).",
        404: "The model is not the one this service serves.",
        413: "The body is larger than CLIP_MAX_BODY_BYTES.",
        415: "The Content-Type is not application/json (UTF-8).",
    }

    def decorate(view):
        for status in statuses:
            view = bp.alt_response(status, schema=OpenAIErrorSchema, description=descriptions[status])(view)
        return view

    return decorate


def _embedder() -> ClipEmbedder:
    return current_app.extensions["clip_embedder"]


def _fetcher() -> ImageFetcher:
    return current_app.extensions["clip_fetcher"]


def _model(embedder: ClipEmbedder) -> dict:
    return {"id": embedder.model_name, "object": "model", "created": _CREATED, "owned_by": "clip-service",
            "pretrained": embedder.pretrained_label, "dimensions": embedder.dimensions}


def _check_model(model: str, embedder: ClipEmbedder) -> None:
    if model != embedder.model_name:
        # OpenAI's answer to a model it does not have; the name sent is not echoed.
        raise OpenAIError(404, f"The model does not exist here; this service serves {embedder.model_name!r} "
                               "(see GET /v1/models).", param="model", code="model_not_found")


def _image_failure(failures: list[tuple[int, FetchError]]) -> OpenAIError:
    # OpenAI has no per-item errors: one failed image fails the request, naming each failure.
    parts = [f"input[{i}]: {error.message} ({error.code})" for i, error in failures[:_MAX_DESCRIBED]]
    if len(failures) > _MAX_DESCRIBED:
        parts.append(f"and {len(failures) - _MAX_DESCRIBED} more")
    first_index, first = failures[0]
    return OpenAIError(400, "Could not use the image at " + "; ".join(parts), param=f"input[{first_index}]",
                       code=first.code)


def embed_inputs(inputs: list[str], modality: str | None) -> tuple[list, int]:
    """Embed texts and images in input order; return the vectors and the texts' token count."""
    embedder = _embedder()
    images = [i for i, item in enumerate(inputs) if is_image_input(item, modality)]
    texts = [i for i, item in enumerate(inputs) if not is_image_input(item, modality)]
    vectors: list = [None] * len(inputs)
    if images:
        fetched = _fetcher().fetch_images([inputs[i] for i in images])
        failures = [(i, item) for i, item in zip(images, fetched) if isinstance(item, FetchError)]
        if failures:
            record_item_failures(error.code for _, error in failures)
            raise _image_failure(failures)
        for i, vector in zip(images, embedder.embed_images(fetched)):
            vectors[i] = vector
        record_embedded("image", len(images))
    text_items = [inputs[i] for i in texts]
    if texts:
        for i, vector in zip(texts, embedder.embed_texts(text_items)):
            vectors[i] = vector
        record_embedded("text", len(texts))
    return vectors, count_tokens(embedder.tokenizer, text_items)


@bp.route("/embeddings", methods=["POST"])
@bp.arguments(EmbeddingRequestSchema)
@bp.response(200, EmbeddingListSchema)
@_documents_errors(400, 404, 413, 415)
def create_embeddings(body):
    """Embed texts and images (OpenAI's embeddings API); the vectors come back in input order."""
    embedder = _embedder()
    _check_model(body["model"], embedder)
    if body.get("dimensions") not in (None, embedder.dimensions):
        raise OpenAIError(400, f"This model's vectors have {embedder.dimensions} dimensions; send dimensions="
                               f"{embedder.dimensions} or leave it out (CLIP vectors cannot be shortened).",
                          param="dimensions", code="unsupported_dimensions")
    vectors, tokens = embed_inputs(body["input"], body.get("modality"))
    data = [{"object": "embedding", "index": i, "embedding": encode_vector(v, body["encoding_format"])}
            for i, v in enumerate(vectors)]
    return json_response({"object": "list", "data": data, "model": embedder.model_name,
                          "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


@bp.route("/models", methods=["GET"])
@bp.response(200, ModelListSchema)
def list_models():
    """List the model this service serves (one per process)."""
    return json_response({"object": "list", "data": [_model(_embedder())]})


@bp.route("/models/<path:model>", methods=["GET"])
@bp.response(200, ModelSchema)
@_documents_errors(404)
def retrieve_model(model):
    """Describe the model this service serves."""
    embedder = _embedder()
    _check_model(model, embedder)
    return json_response(_model(embedder))
