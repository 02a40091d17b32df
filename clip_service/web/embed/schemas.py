"""Marshmallow schemas of POST /embed/text, /embed/image and /embed/mixed: what each accepts and returns."""

from __future__ import annotations

from marshmallow import ValidationError, fields, validate, validates_schema

from ..common_schemas import ItemErrorSchema, LimitedList, LimitedString, ModelInfoSchema, RequestSchema, UrlString


def _texts(**kwargs):
    return LimitedList(
        LimitedString(max_chars="max_text_chars",
                      metadata={"description": "Any text; longer than the model's context "
                                               "(77 tokens) it is truncated as CLIP does."}),
        max_items="max_texts", **kwargs)


def _urls(**kwargs):
    return LimitedList(UrlString(max_chars="max_url_chars"), max_items="max_urls", **kwargs)


class TextEmbedRequestSchema(RequestSchema):
    texts = _texts(required=True, validate=validate.Length(min=1, error="Send at least one text."),
                   metadata={"description": "Texts to embed, in order."})


class ImageEmbedRequestSchema(RequestSchema):
    urls = _urls(required=True, validate=validate.Length(min=1, error="Send at least one URL."),
                 metadata={"description": "http(s) URLs of JPEG, PNG, WebP, GIF or BMP images, in order."})


class MixedEmbedRequestSchema(RequestSchema):
    texts = _texts(load_default=list, metadata={"description": "Texts to embed, in order."})
    urls = _urls(load_default=list, metadata={"description": "Image URLs to embed, in order."})

    # What _not_empty checks, in the OpenAPI document (no field can say it).
    OPENAPI = {"anyOf": [{"required": ["texts"], "properties": {"texts": {"minItems": 1}}},
                         {"required": ["urls"], "properties": {"urls": {"minItems": 1}}}]}

    @validates_schema
    def _not_empty(self, data, **_):
        if not data.get("texts") and not data.get("urls"):
            raise ValidationError("Send at least one text or URL.", field_name="_schema")


_vector = fields.List(fields.Float(), metadata={"description": "L2-normalised vector; [] for a failed image."})


class TextEmbeddingsSchema(ModelInfoSchema):
    embeddings = fields.List(_vector, required=True)


class ImageEmbeddingsSchema(ModelInfoSchema):
    embeddings = fields.List(_vector, required=True)
    errors = fields.List(fields.Nested(ItemErrorSchema), required=True)


class MixedEmbeddingsSchema(ModelInfoSchema):
    text_embeddings = fields.List(_vector, required=True)
    image_embeddings = fields.List(_vector, required=True)
    errors = fields.List(fields.Nested(ItemErrorSchema), required=True)
