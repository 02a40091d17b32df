"""Marshmallow schemas of the OpenAI-compatible API (/v1): OpenAI's field names and shapes.

The request schema reads ``input`` as OpenAI does (one string or a list of
strings) and decides which items are images (see ``is_image_input``); the
limits are the service's own, from settings, as on /embed/*.
"""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from ...config import Settings
from ...images.sources import is_data_uri, is_image_data_uri
from ... import encodings
from ..common_schemas import RequestSchema, example_vector, precision_field, scores_field
from ..current import settings as _settings

MODALITIES = ("text", "image")
ENCODING_FORMATS = ("float", "base64")


def is_image_input(value: str, modality: str | None) -> bool:
    """A data:image/... URI is an image; with modality "image" every item is; with "text" none is."""
    if modality == "text":
        return False
    return modality == "image" or is_image_data_uri(value)


class EmbeddingInput(fields.Field):
    """OpenAI's ``input``: a string or a non-empty list of strings, always loaded as a list.

    Token arrays (lists of integers, which OpenAI also takes) are refused with a
    hint, since they are OpenAI's tokens, not CLIP's.
    """

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list):
            raise ValidationError("Must be a string or a list of strings.")
        if not value:
            raise ValidationError("Send at least one input.")
        limit = _settings().limits.max_texts
        if len(value) > limit:
            raise ValidationError(f"At most {limit} items per request.")
        if all(isinstance(item, int) and not isinstance(item, bool) for item in value) or \
                any(isinstance(item, list) for item in value):
            raise ValidationError("Token arrays are not accepted: send strings (with LangChain's "
                                  "OpenAIEmbeddings, set check_embedding_ctx_length=False).")
        errors = {i: ["Not a valid string."] for i, item in enumerate(value) if not isinstance(item, str)}
        if errors:
            raise ValidationError(errors)
        return value

    def openapi(self, settings: Settings) -> dict:
        """The field's OpenAPI schema, with the limits in force."""
        return {"oneOf": [{"type": "string"},
                          {"type": "array", "items": {"type": "string"}, "minItems": 1,
                           "maxItems": settings.limits.max_texts}]}


class EmbeddingRequestSchema(RequestSchema):
    """The body of POST /v1/embeddings (OpenAI's, plus Infinity's ``modality``)."""

    model = fields.String(required=True, metadata={"description": "The id from GET /v1/models."})
    input = EmbeddingInput(required=True, metadata={"description": (
        "A string or a list of strings, embedded in order. A string that is a data:image/...;base64,... URI "
        "is an image; with modality \"image\" every item is an image (http(s) URL or data URI), with "
        "\"text\" every item is a text. At most CLIP_MAX_TEXTS items, of which at most CLIP_MAX_URLS "
        "images; a text has at most CLIP_MAX_TEXT_CHARS characters and an image URL at most "
        "CLIP_MAX_URL_CHARS.")})
    encoding_format = fields.String(
        load_default="float", allow_none=True, validate=validate.OneOf(ENCODING_FORMATS),
        metadata={"description": "float: lists of numbers; base64: each vector's little-endian float32 "
                                 "bytes, base64-encoded (what the openai package asks for)."})
    dimensions = fields.Integer(
        strict=True, allow_none=True, validate=validate.Range(min=1),
        metadata={"description": "Must be the model's own dimensions (GET /v1/models) or omitted: CLIP "
                                 "vectors cannot be shortened."})
    embedding_types = fields.List(
        fields.String(validate=validate.OneOf(encodings.FORMATS)), allow_none=True,
        validate=validate.Length(min=1, error="Send at least one type."),
        metadata={"description": (
            "Cohere's embedding_types: the formats to answer each vector in (float, base64, float16, int8, uint8, "
            "binary, ubinary; as the encoding field of /embed/* describes them). With one type, embedding is "
            "the vector in it; with several, an object with one key a type, e.g. {\"float\": [...], \"int8\": "
            "[...]}. When sent, encoding_format is not read (the openai package always sends one)."),
            "example": ["float", "int8"]})
    user = fields.String(allow_none=True, metadata={"description": "Accepted and ignored."})
    modality = fields.String(allow_none=True, validate=validate.OneOf(MODALITIES), metadata={
        "description": "Infinity's convention: image treats every input as an image, text as a text. "
                       "Omitted: data:image/ URIs are images, the rest texts."})

    @validates_schema
    def _item_limits(self, data, **_):
        inputs, modality, settings = data.get("input") or [], data.get("modality"), _settings()
        errors, images = {}, 0
        for i, item in enumerate(inputs):
            if is_image_input(item, modality):
                images += 1
                # A data URI is bounded by the body size and CLIP_FETCH_MAX_BYTES instead.
                if not is_data_uri(item) and len(item) > settings.fetch.max_url_chars:
                    errors[i] = [f"Longer than {settings.fetch.max_url_chars} characters."]
            elif len(item) > settings.limits.max_text_chars:
                errors[i] = [f"Longer than {settings.limits.max_text_chars} characters."]
        if errors:
            raise ValidationError(errors, field_name="input")
        if images > settings.limits.max_urls:
            raise ValidationError(f"At most {settings.limits.max_urls} images per request.", field_name="input")

    @validates_schema
    def _each_type_once(self, data, **_):
        types = data.get("embedding_types") or []
        if len(set(types)) < len(types):
            raise ValidationError("Name each type at most once.", field_name="embedding_types")

    @post_load
    def _defaults(self, data, **_):
        data["encoding_format"] = data.get("encoding_format") or "float"
        # The formats to answer in: Cohere's list when sent, else OpenAI's one.
        data["embedding_types"] = data.get("embedding_types") or [data["encoding_format"]]
        return data


class EmbeddingSchema(Schema):
    object = fields.Constant("embedding", required=True)
    index = fields.Integer(required=True, metadata={"description": "Position of the input."})
    embedding = fields.Raw(required=True, metadata={
        "description": "The L2-normalised vector: a list of floats, or base64 of its little-endian float32 "
                       "bytes when encoding_format is base64; in the one type of embedding_types (a list of "
                       "numbers, or a base64 string for base64 and float16), or with several types an object "
                       "with one key a type.",
        "oneOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string", "format": "byte"},
                  {"type": "object", "additionalProperties": {
                      "oneOf": [{"type": "array", "items": {"type": "number"}},
                                {"type": "string", "format": "byte"}]}}]})


class UsageSchema(Schema):
    prompt_tokens = fields.Integer(required=True, metadata={
        "description": "CLIP tokens of the texts (start and end tokens included, at most 77 per text); "
                       "images count 0."})
    total_tokens = fields.Integer(required=True)


class EmbeddingListSchema(Schema):
    object = fields.Constant("list", required=True)
    data = fields.List(fields.Nested(EmbeddingSchema), required=True)
    model = fields.String(required=True)
    usage = fields.Nested(UsageSchema, required=True)


class ModelSchema(Schema):
    id = fields.String(required=True, metadata={"description": "The value to send as model."})
    object = fields.Constant("model", required=True)
    created = fields.Integer(required=True, metadata={"description": "When this process loaded it (Unix time)."})
    owned_by = fields.String(required=True)
    pretrained = fields.String(metadata={"description": "open_clip pretrained tag or checkpoint file name."})
    dimensions = fields.Integer(metadata={"description": "Length of every vector."})
    scores = scores_field()
    precision = precision_field()


class ModelListSchema(Schema):
    object = fields.Constant("list", required=True)
    data = fields.List(fields.Nested(ModelSchema), required=True)


class OpenAIErrorDetailSchema(Schema):
    message = fields.String(required=True)
    type = fields.String(required=True, metadata={
        "description": "invalid_request_error for 4xx, server_error for 5xx."})
    param = fields.String(required=True, allow_none=True, metadata={
        "description": "The request field at fault, e.g. input[2]; null when none is."})
    code = fields.String(required=True, allow_none=True, metadata={
        "description": "Machine-readable reason; for an image, its per-item code (e.g. upstream_status)."})


class OpenAIErrorSchema(Schema):
    error = fields.Nested(OpenAIErrorDetailSchema, required=True)


def _example(embedding) -> dict:
    return {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": embedding}],
            "model": "ViT-B-32", "usage": {"prompt_tokens": 7, "total_tokens": 7}}


# The answers of each encoding_format and of embedding_types, for the OpenAPI document (a toy 8-d vector).
EMBEDDING_EXAMPLES = {
    **{fmt: {"summary": f"encoding_format: {fmt}", "value": _example(example_vector(fmt))} for fmt in ENCODING_FORMATS},
    **{f"embedding_types {fmt}": {"summary": f"embedding_types: [{fmt}]", "value": _example(example_vector(fmt))}
       for fmt in encodings.FORMATS if fmt not in ENCODING_FORMATS},
    "embedding_types several": {"summary": "embedding_types: [float, int8, ubinary]", "value": _example(
        {fmt: example_vector(fmt) for fmt in ("float", "int8", "ubinary")})},
}
