"""Marshmallow schemas of Weaviate's multi2vec-clip API: ``vecRequest``, ``vecResponse``, /meta and its error."""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, post_load

from ..common_schemas import BodySchema, LimitedList, LimitedString, precision_field, scores_field


class VectorizeRequestSchema(BodySchema):
    """Weaviate's ``vecRequest``: either list may be absent (1.26 and later) or null (before)."""

    class Meta:
        # As the reference container (pydantic) does: a field a later Weaviate adds is ignored,
        # and Weaviate checks the counts of what comes back.
        unknown = EXCLUDE

    texts = LimitedList(
        LimitedString(max_chars="max_text_chars"), max_items="max_texts", load_default=list, allow_none=True,
        metadata={"description": "Texts to embed, in order (at most CLIP_MAX_TEXTS, each at most "
                                 "CLIP_MAX_TEXT_CHARS characters; longer than 77 tokens they are truncated as "
                                 "CLIP does)."})
    images = LimitedList(
        fields.String(metadata={"description": "One image file, base64-encoded, no data: prefix."}),
        max_items="max_urls", load_default=list, allow_none=True,
        metadata={"description": "Images to embed, in order (at most CLIP_MAX_URLS): JPEG, PNG, WebP, GIF or "
                                 "BMP of at most CLIP_FETCH_MAX_BYTES bytes and CLIP_MAX_IMAGE_PIXELS pixels."})

    @post_load
    def _null_is_empty(self, data, **_):
        return {"texts": data.get("texts") or [], "images": data.get("images") or []}


class VectorizeResponseSchema(Schema):
    """Weaviate's ``vecResponse`` on success: one L2-normalised vector per input, in order ([] for none)."""

    text_vectors = fields.List(fields.List(fields.Float()), required=True, data_key="textVectors")
    image_vectors = fields.List(fields.List(fields.Float()), required=True, data_key="imageVectors")


class MetaSchema(Schema):
    """The model: the keys the reference container answers for an open_clip model, the vector length and precision."""

    model_name = fields.String(required=True, metadata={"description": "open_clip model name."})
    pretrained = fields.String(required=True, metadata={"description": "Pretrained tag or checkpoint file name."})
    dimensions = fields.Integer(required=True, metadata={"description": "Length of every vector."})
    scores = scores_field(required=True)
    precision = precision_field(required=True)


class WeaviateErrorSchema(Schema):
    error = fields.String(required=True, metadata={"description": "What went wrong (Weaviate shows it)."})
