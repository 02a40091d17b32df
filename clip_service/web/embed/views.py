"""POST /embed/text, /embed/image and /embed/mixed."""

from __future__ import annotations

from flask_smorest import Blueprint

from ...pipeline import ImageSource, ImageVectors
from .. import current
from ..common_schemas import item_errors
from ..jsonio import JsonBodyParser, json_response
from ..openapi import documents_body_errors
from ..uploads import takes_uploads
from .schemas import (
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


def _images_answer(images: ImageVectors):
    return json_response({"embeddings": images.slots, "errors": item_errors(images.failures), **current.model_info()})


@bp.route("/text", methods=["POST"])
@bp.arguments(TextEmbedRequestSchema)
@bp.response(200, TextEmbeddingsSchema)
@documents_body_errors(bp)
def embed_text(body):
    """Embed texts."""
    texts = current.pipeline().embed_texts(body["texts"])
    return json_response({"embeddings": texts.vectors, **current.model_info()})


def _embed_uploads(uploads: list[ImageSource]):
    return _images_answer(current.pipeline().embed_images(uploads))


@bp.route("/image", methods=["POST"])
@takes_uploads(_embed_uploads)  # multipart/form-data goes there; JSON goes on to the schema
@bp.arguments(ImageEmbedRequestSchema)
@bp.response(200, ImageEmbeddingsSchema)
@documents_body_errors(bp)
def embed_image(body):
    """Download images by URL and embed them; a failed image leaves [] in its slot."""
    return _images_answer(current.pipeline().embed_images(body["urls"]))


@bp.route("/mixed", methods=["POST"])
@bp.arguments(MixedEmbedRequestSchema)
@bp.response(200, MixedEmbeddingsSchema)
@documents_body_errors(bp)
def embed_mixed(body):
    """Embed texts and images in one call."""
    texts, images = current.pipeline().embed_mixed(body["texts"], body["urls"])
    return json_response({"text_embeddings": texts.vectors, "image_embeddings": images.slots,
                          "errors": item_errors(images.failures), **current.model_info()})
