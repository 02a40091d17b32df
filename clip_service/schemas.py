"""Marshmallow schemas: what each endpoint accepts and returns.

The request schemas validate the body; the response schemas document it (the
views serialise embeddings with orjson directly, since marshmallow would walk
every float).
"""

from __future__ import annotations

from flask import current_app
from marshmallow import Schema, ValidationError, fields, validate, validates, validates_schema


def _settings():
    return current_app.config["CLIP"]


def _check_texts(texts: list[str]) -> None:
    settings = _settings()
    if len(texts) > settings.max_texts:
        raise ValidationError(f"at most {settings.max_texts} texts per request")
    too_long = [i for i, text in enumerate(texts) if len(text) > settings.max_text_chars]
    if too_long:
        raise ValidationError(
            f"texts at indexes {too_long[:10]} are longer than {settings.max_text_chars} characters")


def _check_urls(urls: list[str]) -> None:
    settings = _settings()
    if len(urls) > settings.max_urls:
        raise ValidationError(f"at most {settings.max_urls} URLs per request")
    too_long = [i for i, url in enumerate(urls) if len(url) > settings.max_url_chars]
    if too_long:
        raise ValidationError(
            f"URLs at indexes {too_long[:10]} are longer than {settings.max_url_chars} characters")


class TextEmbedRequestSchema(Schema):
    texts = fields.List(fields.String(), required=True, validate=validate.Length(min=1),
                        metadata={"description": "Texts to embed, in order."})

    @validates("texts")
    def _limits(self, texts, **_):
        _check_texts(texts)


class ImageEmbedRequestSchema(Schema):
    urls = fields.List(fields.String(), required=True, validate=validate.Length(min=1),
                       metadata={"description": "http(s) URLs of JPEG, PNG, WebP, GIF or BMP images."})

    @validates("urls")
    def _limits(self, urls, **_):
        _check_urls(urls)


class MixedEmbedRequestSchema(Schema):
    texts = fields.List(fields.String(), load_default=list)
    urls = fields.List(fields.String(), load_default=list)

    @validates("texts")
    def _text_limits(self, texts, **_):
        _check_texts(texts)

    @validates("urls")
    def _url_limits(self, urls, **_):
        _check_urls(urls)

    @validates_schema
    def _not_empty(self, data, **_):
        if not data.get("texts") and not data.get("urls"):
            raise ValidationError("send at least one text or URL", field_name="_schema")


class ItemErrorSchema(Schema):
    index = fields.Integer(required=True, metadata={"description": "Position of the URL in the request."})
    url = fields.String(required=True)
    code = fields.String(required=True, metadata={"description": "Machine-readable reason."})
    message = fields.String(required=True)


class _ModelInfoSchema(Schema):
    model = fields.String(metadata={"description": "open_clip model name."})
    pretrained = fields.String(metadata={"description": "Pretrained tag or checkpoint file name."})
    dimensions = fields.Integer(metadata={"description": "Length of every vector."})


_vector = fields.List(fields.Float(), metadata={"description": "L2-normalised vector; [] for a failed image."})


class TextEmbeddingsSchema(_ModelInfoSchema):
    embeddings = fields.List(_vector, required=True)


class ImageEmbeddingsSchema(_ModelInfoSchema):
    embeddings = fields.List(_vector, required=True)
    errors = fields.List(fields.Nested(ItemErrorSchema), required=True)


class MixedEmbeddingsSchema(_ModelInfoSchema):
    text_embeddings = fields.List(_vector, required=True)
    image_embeddings = fields.List(_vector, required=True)
    errors = fields.List(fields.Nested(ItemErrorSchema), required=True)


class HealthSchema(Schema):
    status = fields.String(required=True, metadata={"description": "healthy or unhealthy"})
    model_loaded = fields.Boolean(required=True)


class ErrorEnvelopeSchema(Schema):
    code = fields.Integer(required=True, metadata={"description": "HTTP status code."})
    status = fields.String(required=True, metadata={"description": "HTTP status name."})
    message = fields.String(metadata={"description": "What went wrong, for a person."})
    errors = fields.Dict(metadata={"description": "Field-by-field details, when there are any."})
