"""POST /embed/text, /embed/image and /embed/mixed."""

from __future__ import annotations

from flask_smorest import Blueprint

from ...encodings import slots, to_json
from ...pipeline import ImageVectors
from .. import current
from ..common_schemas import item_errors
from ..jsonio import JsonBodyParser, json_response
from ..openapi import documents_body_errors
from ..uploads import takes_uploads
from .schemas import (
    IMAGE_EXAMPLES,
    MIXED_EXAMPLES,
    TEXT_EXAMPLES,
    ImageEmbeddingsSchema,
    ImageEmbedRequestSchema,
    MixedEmbeddingsSchema,
    MixedEmbedRequestSchema,
    TextEmbeddingsSchema,
    TextEmbedRequestSchema,
)

bp = Blueprint("embeddings", __name__, url_prefix="/embed",
               description="Turn texts and images into L2-normalised CLIP vectors.")
bp.ARGUMENTS_PARSER = JsonBodyParser()  # 415/400 for bodies that are not UTF-8 JSON


def _images_answer(images: ImageVectors, encoding: str):
    return json_response({"embeddings": slots(images.vectors, encoding), "errors": item_errors(images.failures),
                          **current.model_info()})


@bp.route("/text", methods=["POST"])
@bp.arguments(TextEmbedRequestSchema)
@bp.response(200, TextEmbeddingsSchema, examples=TEXT_EXAMPLES)
@documents_body_errors(bp)
def embed_text(body):
    """Embed texts."""
    texts = current.pipeline().embed_texts(body["texts"])
    return json_response({"embeddings": to_json(texts.vectors, body["encoding"]), **current.model_info()})


def _embed_uploads(form: dict):
    return _images_answer(current.pipeline().embed_images(form["images"]), form["encoding"])


@bp.route("/image", methods=["POST"])
@takes_uploads(_embed_uploads)  # multipart/form-data goes there; JSON goes on to the schema
@bp.arguments(ImageEmbedRequestSchema)
@bp.response(200, ImageEmbeddingsSchema, examples=IMAGE_EXAMPLES)
@documents_body_errors(bp)
def embed_image(body):
    """Download images by URL and embed them; a failed image leaves [] in its slot."""
    return _images_answer(current.pipeline().embed_images(body["urls"]), body["encoding"])


@bp.route("/mixed", methods=["POST"])
@bp.arguments(MixedEmbedRequestSchema)
@bp.response(200, MixedEmbeddingsSchema, examples=MIXED_EXAMPLES)
@documents_body_errors(bp)
def embed_mixed(body):
    """Embed texts and images in one call."""
    texts, images = current.pipeline().embed_mixed(body["texts"], body["urls"])
    return json_response({"text_embeddings": to_json(texts.vectors, body["encoding"]),
                          "image_embeddings": slots(images.vectors, body["encoding"]),
                          "errors": item_errors(images.failures), **current.model_info()})
