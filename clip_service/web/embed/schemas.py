"""Marshmallow schemas of POST /embed/text, /embed/image and /embed/mixed: what each accepts and returns."""

from __future__ import annotations

from marshmallow import ValidationError, fields, validate, validates_schema

from ..common_schemas import (
    ItemErrorSchema,
    LimitedList,
    LimitedString,
    ModelInfoSchema,
    ModelWidth,
    RequestSchema,
    UrlString,
    encoding_field,
    example_vector,
    format_examples,
    vector_field,
)


def _texts(**kwargs):
    return LimitedList(
        LimitedString(max_chars="max_text_chars",
                      metadata={"description": "Any text; longer than the model's context "
                                               "(77 tokens) it is truncated as CLIP does."}),
        max_items="max_texts", **kwargs)


def _urls(**kwargs):
    return LimitedList(UrlString(max_chars="max_url_chars"), max_items="max_urls", **kwargs)


class FormatSchema(RequestSchema):
    """What every embedding request may add: the format of its vectors, and OpenAI's ``dimensions``."""

    encoding = encoding_field()
    dimensions = ModelWidth()


class TextEmbedRequestSchema(FormatSchema):
    texts = _texts(required=True, validate=validate.Length(min=1, error="Send at least one text."),
                   metadata={"description": "Texts to embed, in order."})


class ImageEmbedRequestSchema(FormatSchema):
    urls = _urls(required=True, validate=validate.Length(min=1, error="Send at least one URL."),
                 metadata={"description": "http(s) URLs of JPEG, PNG, WebP, GIF or BMP images, in order."})


class MixedEmbedRequestSchema(FormatSchema):
    texts = _texts(load_default=list, metadata={"description": "Texts to embed, in order."})
    urls = _urls(load_default=list, metadata={"description": "Image URLs to embed, in order."})

    # What _not_empty checks, in the OpenAPI document (no field can say it).
    OPENAPI = {"anyOf": [{"required": ["texts"], "properties": {"texts": {"minItems": 1}}},
                         {"required": ["urls"], "properties": {"urls": {"minItems": 1}}}]}

    @validates_schema
    def _not_empty(self, data, **_):
        if not data.get("texts") and not data.get("urls"):
            raise ValidationError("Send at least one text or URL.", field_name="_schema")


_vector = vector_field("The L2-normalised vector in the request's encoding (numbers, or one base64 string for "
                       "base64 and float16); [] for a failed image.")


class TextEmbeddingsSchema(ModelInfoSchema):
    embeddings = fields.List(_vector, required=True)


class ImageEmbeddingsSchema(ModelInfoSchema):
    embeddings = fields.List(_vector, required=True)
    errors = fields.List(fields.Nested(ItemErrorSchema), required=True)


class MixedEmbeddingsSchema(ModelInfoSchema):
    text_embeddings = fields.List(_vector, required=True)
    image_embeddings = fields.List(_vector, required=True)
    errors = fields.List(fields.Nested(ItemErrorSchema), required=True)


# The answers in each encoding, for the OpenAPI document: a toy 8-d vector where a real one has the model's width.
_MODEL = {"model": "ViT-B-32", "pretrained": "openai", "dimensions": 8}
_FAILED = {"index": 1, "url": "https://example.com/gone.jpg", "code": "upstream_status",
           "message": "the image host answered HTTP 404"}
TEXT_EXAMPLES = format_examples(lambda fmt: {"embeddings": [example_vector(fmt)], **_MODEL})
IMAGE_EXAMPLES = format_examples(lambda fmt: {"embeddings": [example_vector(fmt), []], "errors": [_FAILED], **_MODEL})
MIXED_EXAMPLES = format_examples(lambda fmt: {"text_embeddings": [example_vector(fmt)],
                                              "image_embeddings": [example_vector(fmt), []], "errors": [_FAILED],
                                              **_MODEL})
