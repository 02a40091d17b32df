"""Marshmallow schemas: what each endpoint accepts and returns.

The request schemas validate the body, and the OpenAPI document is generated
from them (see openapi.py): the limits that come from settings (items per list,
characters per string) are fields that read the running app's settings, and
the document shows the same numbers. The response schemas document the answers
(the views serialise embeddings with orjson directly, since marshmallow would
walk every float).
"""

from __future__ import annotations

from marshmallow import RAISE, Schema, ValidationError, fields, pre_load, validate, validates_schema

from ..images.sources import is_data_uri
from ..pipeline import ItemFailure
from .current import settings as _settings


class LimitedList(fields.List):
    """A list of at most ``getattr(settings, max_items)`` items.

    The length is checked before any item is read, so an oversized list costs
    nothing and its error names the limit, not each item.
    """

    def __init__(self, inner, *, max_items: str, **kwargs):
        super().__init__(inner, **kwargs)
        self.max_items = max_items

    def openapi(self, settings) -> dict:
        """The limit in force, for the OpenAPI document."""
        return {"maxItems": getattr(settings, self.max_items)}

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, list):
            limit = getattr(_settings(), self.max_items)
            if len(value) > limit:
                raise ValidationError(f"At most {limit} items per request.")
        return super()._deserialize(value, attr, data, **kwargs)


class LimitedString(fields.String):
    """A string of at most ``getattr(settings, max_chars)`` characters."""

    def __init__(self, *, max_chars: str, **kwargs):
        super().__init__(**kwargs)
        self.max_chars = max_chars

    def openapi(self, settings) -> dict:
        """The limit in force, for the OpenAPI document."""
        return {"maxLength": getattr(settings, self.max_chars)}

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        limit = getattr(_settings(), self.max_chars)
        if len(text) > limit:
            raise ValidationError(f"Longer than {limit} characters.")
        return text


class UrlString(LimitedString):
    """A URL string; one holding a lone surrogate cannot be a URL (and could not be echoed back as UTF-8)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str) and is_data_uri(value):
            # The image itself, bounded by the body limit and CLIP_FETCH_MAX_BYTES, not by
            # max_url_chars; its header is echoed only when printable ASCII (image_sources.describe).
            return fields.String._deserialize(self, value, attr, data, **kwargs)
        url = super()._deserialize(value, attr, data, **kwargs)
        if any("\ud800" <= ch <= "\udfff" for ch in url):
            raise ValidationError("Not a valid URL: it holds a lone surrogate.")
        return url


class StrictBoolean(fields.Boolean):
    """JSON true or false only: not 0, 1, "yes" or "on", which marshmallow would read as booleans."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise ValidationError("Not a valid boolean: send true or false.")
        return value


class _RequestSchema(Schema):
    class Meta:
        unknown = RAISE  # documented as additionalProperties: false

    @pre_load
    def _known_fields_only(self, data, **kwargs):
        # Refused here, not by marshmallow, whose error would echo each unknown
        # name back (however long, or not even encodable as UTF-8).
        if isinstance(data, dict) and not set(data) <= set(self.load_fields):
            raise ValidationError(f"Unknown field; this endpoint accepts only "
                                  f"{', '.join(sorted(self.load_fields))}.", field_name="_schema")
        return data


def _texts(**kwargs):
    return LimitedList(
        LimitedString(max_chars="max_text_chars",
                      metadata={"description": "Any text; longer than the model's context "
                                               "(77 tokens) it is truncated as CLIP does."}),
        max_items="max_texts", **kwargs)


def _urls(**kwargs):
    return LimitedList(UrlString(max_chars="max_url_chars"), max_items="max_urls", **kwargs)


class TextEmbedRequestSchema(_RequestSchema):
    texts = _texts(required=True, validate=validate.Length(min=1, error="Send at least one text."),
                   metadata={"description": "Texts to embed, in order."})


class ImageEmbedRequestSchema(_RequestSchema):
    urls = _urls(required=True, validate=validate.Length(min=1, error="Send at least one URL."),
                 metadata={"description": "http(s) URLs of JPEG, PNG, WebP, GIF or BMP images, in order."})


class MixedEmbedRequestSchema(_RequestSchema):
    texts = _texts(load_default=list, metadata={"description": "Texts to embed, in order."})
    urls = _urls(load_default=list, metadata={"description": "Image URLs to embed, in order."})

    # What _not_empty checks, in the OpenAPI document (no field can say it).
    OPENAPI = {"anyOf": [{"required": ["texts"], "properties": {"texts": {"minItems": 1}}},
                         {"required": ["urls"], "properties": {"urls": {"minItems": 1}}}]}

    @validates_schema
    def _not_empty(self, data, **_):
        if not data.get("texts") and not data.get("urls"):
            raise ValidationError("Send at least one text or URL.", field_name="_schema")


class ItemErrorSchema(Schema):
    index = fields.Integer(required=True, metadata={"description": "Position of the image in the request."})
    url = fields.String(required=True, metadata={
        "description": "The URL; for a data URI only its header (data:image/png;base64,...); for an uploaded "
                       "file upload:<index>."})
    code = fields.String(required=True, metadata={
        "description": "Machine-readable reason: invalid_url, blocked_url, fetch_failed, fetch_timeout, "
                       "upstream_status, too_many_redirects, too_large, not_an_image, unsupported_format or "
                       "decode_failed."})
    message = fields.String(required=True, metadata={"description": "What went wrong, for a person."})


def item_errors(failures: list[ItemFailure]) -> list[dict]:
    """The ``errors`` entries of an answer, in the shape of ItemErrorSchema."""
    return [{"index": f.index, "url": f.source, "code": f.error.code, "message": f.error.message}
            for f in failures]


class _ModelInfoSchema(Schema):
    model = fields.String(required=True, metadata={"description": "open_clip model name."})
    pretrained = fields.String(required=True,
                               metadata={"description": "Pretrained tag or checkpoint file name."})
    dimensions = fields.Integer(required=True, metadata={"description": "Length of every vector."})


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
    status = fields.String(required=True, metadata={
        "description": "/health: healthy or unhealthy; /health/live: alive; /health/ready: ready or unready."})
    model_loaded = fields.Boolean(required=True, metadata={"description": "Whether this worker holds the model."})


class ErrorEnvelopeSchema(Schema):
    code = fields.Integer(required=True, metadata={"description": "HTTP status code."})
    status = fields.String(required=True, metadata={"description": "HTTP status name."})
    message = fields.String(required=True, metadata={"description": "What went wrong, for a person."})
    errors = fields.Dict(required=True, metadata={
        "description": "Field-by-field details ({} when there are none); list items are keyed by index."})
