"""POST /embed/text, /embed/image and /embed/mixed."""

from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor

from flask import current_app
from flask_smorest import Blueprint

from ..images.fetcher import FetchError, ImageFetcher
from ..images.sources import describe
from ..model.embedder import ClipEmbedder
from ..ops.observability import record_embedded, record_item_failures
from .jsonio import JsonBodyParser, json_response
from .schemas import (
    ErrorEnvelopeSchema,
    ImageEmbeddingsSchema,
    ImageEmbedRequestSchema,
    MixedEmbeddingsSchema,
    MixedEmbedRequestSchema,
    TextEmbeddingsSchema,
    TextEmbedRequestSchema,
)
from .uploads import read_uploads, takes_uploads

bp = Blueprint("embeddings", __name__, url_prefix="/embed",
               description="Turn texts and images into L2-normalised CLIP vectors.")
bp.ARGUMENTS_PARSER = JsonBodyParser()  # 415/400 for bodies that are not UTF-8 JSON


def _documents_body_errors(view):
    """Document the 4xx answers every JSON-body endpoint gives, all in the error envelope."""
    for status, description in [
        (400, "The body is empty, not UTF-8, not JSON, or nested too deeply."),
        (413, "The body is larger than CLIP_MAX_BODY_BYTES."),
        (415, "The Content-Type is not application/json (UTF-8)."),
        (422, "The JSON is not a valid request: see errors, field by field."),
    ]:
        view = bp.alt_response(status, schema=ErrorEnvelopeSchema, description=description)(view)
    return view


def _embedder() -> ClipEmbedder:
    return current_app.extensions["clip_embedder"]


def _fetcher() -> ImageFetcher:
    return current_app.extensions["clip_fetcher"]


def _model_info() -> dict:
    embedder = _embedder()
    return {"model": embedder.model_name, "pretrained": embedder.pretrained_label,
            "dimensions": embedder.dimensions}


def embed_texts(texts: list[str]):
    vectors = _embedder().embed_texts(texts)
    record_embedded("text", len(texts))
    return vectors


def embed_urls(urls: list[str]) -> tuple[list, list[dict]]:
    """Fetch and embed ``urls`` as one batch; failed slots hold [] and get an error entry."""
    return embed_fetched([describe(url) for url in urls], _fetcher().fetch_images(urls))


def embed_fetched(labels: list[str], fetched: list) -> tuple[list, list[dict]]:
    """Embed the images of ``fetched`` as one batch; a FetchError's slot holds [] and gets an error entry."""
    good = [i for i, item in enumerate(fetched) if not isinstance(item, FetchError)]
    vectors = _embedder().embed_images([fetched[i] for i in good])
    record_embedded("image", len(good))
    slots: list = [[] for _ in labels]
    for row, i in enumerate(good):
        slots[i] = vectors[row]
    errors = [{"index": i, "url": url, "code": item.code, "message": item.message}
              for i, (url, item) in enumerate(zip(labels, fetched)) if isinstance(item, FetchError)]
    record_item_failures(e["code"] for e in errors)
    return slots, errors


@bp.route("/text", methods=["POST"])
@bp.arguments(TextEmbedRequestSchema)
@bp.response(200, TextEmbeddingsSchema)
@_documents_body_errors
def embed_text(body):
    """Embed texts."""
    vectors = embed_texts(body["texts"])
    return json_response({"embeddings": vectors, **_model_info()})


def _embed_uploads():
    slots, errors = embed_fetched(*read_uploads())
    return json_response({"embeddings": slots, "errors": errors, **_model_info()})


@bp.route("/image", methods=["POST"])
@takes_uploads(_embed_uploads)  # multipart/form-data goes there; JSON goes on to the schema
@bp.arguments(ImageEmbedRequestSchema)
@bp.response(200, ImageEmbeddingsSchema)
@_documents_body_errors
def embed_image(body):
    """Download images by URL and embed them; a failed image leaves [] in its slot."""
    slots, errors = embed_urls(body["urls"])
    return json_response({"embeddings": slots, "errors": errors, **_model_info()})


@bp.route("/mixed", methods=["POST"])
@bp.arguments(MixedEmbedRequestSchema)
@bp.response(200, MixedEmbeddingsSchema)
@_documents_body_errors
def embed_mixed(body):
    """Embed texts and images in one call."""
    texts, urls = body["texts"], body["urls"]
    with ThreadPoolExecutor(1, thread_name_prefix="mixed-texts") as pool:  # no thread until a submit
        # The texts go through the model while the images download, not after them.
        text_job = pool.submit(contextvars.copy_context().run, _embedder().embed_texts, texts) \
            if texts and urls else None
        slots, errors = embed_urls(urls) if urls else ([], [])
        text_vectors = text_job.result() if text_job else _embedder().embed_texts(texts)
    record_embedded("text", len(texts))
    return json_response({"text_embeddings": text_vectors, "image_embeddings": slots,
                          "errors": errors, **_model_info()})
