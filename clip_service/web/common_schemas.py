"""What every API family's schemas are built from: fields with limits from settings, and the shared shapes.

The limits that come from settings (items per list, characters per string)
are fields that read the running app's settings when they validate, and give
the same numbers to the OpenAPI document (``openapi(settings)``, see
openapi.py). Response schemas only document the answers: views serialise
vectors with orjson directly, since marshmallow would walk every float.
"""

from __future__ import annotations

import re

import numpy as np
from marshmallow import RAISE, Schema, ValidationError, fields, pre_load, validate

from .. import encodings
from ..images.sources import is_data_uri
from ..pipeline import ItemFailure
from .current import pipeline as _pipeline
from .current import settings as _settings


class LimitedList(fields.List):
    """A list of at most ``settings.value(max_items)`` items.

    The length is checked before any item is read, so an oversized list costs
    nothing and its error names the limit, not each item.
    """

    def __init__(self, inner, *, max_items: str, **kwargs):
        super().__init__(inner, **kwargs)
        self.max_items = max_items

    def openapi(self, settings) -> dict:
        """The limit in force, for the OpenAPI document."""
        return {"maxItems": settings.value(self.max_items)}

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, list):
            limit = _settings().value(self.max_items)
            if len(value) > limit:
                raise ValidationError(f"At most {limit} items per request.")
        return super()._deserialize(value, attr, data, **kwargs)


class LimitedString(fields.String):
    """A string of at most ``settings.value(max_chars)`` characters."""

    def __init__(self, *, max_chars: str, **kwargs):
        super().__init__(**kwargs)
        self.max_chars = max_chars

    def openapi(self, settings) -> dict:
        """The limit in force, for the OpenAPI document."""
        return {"maxLength": settings.value(self.max_chars)}

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        limit = _settings().value(self.max_chars)
        if len(text) > limit:
            raise ValidationError(f"Longer than {limit} characters.")
        return text


class UrlString(LimitedString):
    """A URL string, or a ``data:`` URI (bounded by the body size instead)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str) and is_data_uri(value):
            # The image itself, bounded by the body limit and CLIP_FETCH_MAX_BYTES, not by
            # max_url_chars; its header is echoed only when printable ASCII (image_sources.describe).
            return fields.String._deserialize(self, value, attr, data, **kwargs)
        return super()._deserialize(value, attr, data, **kwargs)


class ImageInput(UrlString):
    """An image: an http(s) URL, a ``data:`` URI, or raw base64 (what Hugging Face's clients send)."""

    def openapi(self, settings) -> dict:
        # No maxLength: raw base64 and data: URIs are bounded by the body size, not by the URL limit.
        return {}

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str) and "://" not in value[:16] and not is_data_uri(value):
            # Raw base64 is read as a data: URI, with every limit a data: URI has.
            return "data:image/*;base64," + fields.String._deserialize(self, value, attr, data, **kwargs)
        return super()._deserialize(value, attr, data, **kwargs)


class StrictBoolean(fields.Boolean):
    """JSON true or false only: not 0, 1, "yes" or "on", which marshmallow would read as booleans."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise ValidationError("Not a valid boolean: send true or false.")
        return value


# One half of a UTF-16 surrogate pair, alone: JSON's "\ud800" escape spells one and Python reads it,
# but it is not text, and UTF-8 (orjson writing an answer that echoes it) cannot encode it.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_NOT_TEXT = "Not valid text: it holds a lone surrogate (an unpaired \\ud800 to \\udfff escape)."


def _not_text(value) -> bool:
    # isascii() is a flag lookup: URLs and base64 images are never scanned.
    return isinstance(value, str) and not value.isascii() and _LONE_SURROGATE.search(value) is not None


class BodySchema(Schema):
    """A JSON request body (every family's): a lone surrogate in a field's string, or in a name, is refused.

    Refused when the body is loaded, naming the field, so it costs no model
    work; otherwise an answer that echoes the text (a label, a document) is a
    500 once the model has run. Each schema looks at its own fields (a nested
    schema at its own), so only the names the endpoint knows are named.
    """

    @pre_load
    def _text_only(self, data, **kwargs):
        if not isinstance(data, dict):
            return data
        if any(_not_text(name) for name in data):
            # No field has such a name; it is not echoed.
            raise ValidationError("A field name is not valid text: it holds a lone surrogate.", field_name="_schema")
        errors: dict = {}
        for name, field in self.load_fields.items():
            key = field.data_key or name
            value = data.get(key)
            if _not_text(value):
                errors[key] = [_NOT_TEXT]
            elif isinstance(value, list) and (items := {i: [_NOT_TEXT] for i, item in enumerate(value)
                                                        if _not_text(item)}):
                errors[key] = items
        if errors:
            raise ValidationError(errors)
        return data


class RequestSchema(BodySchema):
    """A request body: unknown fields are refused, naming the fields the endpoint accepts."""

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


def precision_field(**kwargs) -> fields.String:
    """The arithmetic in force (ModelInfo.precision), as every answer that names the model has it."""
    return fields.String(validate=validate.OneOf(("fp32", "bf16")), metadata={"description": (
        "What the vectors are computed in: fp32 (open_clip's arithmetic: its vectors to ~3e-7) or bf16 "
        "(bfloat16 products with fp32 sums, within cosine 0.9999 of fp32's); CLIP_PRECISION, by default bf16 "
        "where the CPU has native bfloat16.")}, **kwargs)


class ModelInfoSchema(Schema):
    """The model fields every answer of the service's own API carries."""

    model = fields.String(required=True, metadata={"description": "open_clip model name."})
    pretrained = fields.String(required=True,
                               metadata={"description": "Pretrained tag or checkpoint file name."})
    dimensions = fields.Integer(required=True, metadata={"description": "Length of every vector."})
    precision = precision_field(required=True)


def scores_field(**kwargs) -> fields.String:
    """The model's zero-shot objective (EmbeddingPipeline.scores), where an answer describes the model or scores."""
    return fields.String(validate=validate.OneOf(("softmax", "sigmoid")), metadata={"description": (
        "How /classify and /rank's probabilities follow the model's training: softmax over the candidates of logit_scale x cosine (contrastive CLIP; they sum to 1), or sigmoid(logit_scale x cosine + logit_bias) for each candidate on its own (SigLIP, SigLIP2).")}, **kwargs)


class ErrorEnvelopeSchema(Schema):
    code = fields.Integer(required=True, metadata={"description": "HTTP status code."})
    status = fields.String(required=True, metadata={"description": "HTTP status name."})
    message = fields.String(required=True, metadata={"description": "What went wrong, for a person."})
    errors = fields.Dict(required=True, metadata={
        "description": "Field-by-field details ({} when there are none); list items are keyed by index."})


# --- vector formats (clip_service/encodings.py): the request fields, the answers' vectors, examples ----

ENCODING_DESCRIPTION = (
    "How each vector is written, all computed from the same float32 vector: float (numbers; the default), "
    "base64 (its little-endian float32 bytes, as OpenAI's encoding_format), float16 (base64 of its "
    "little-endian IEEE half-precision bytes; within 2^-12 a component), int8 (integers round(256 x) clipped "
    "to [-128, 127]; within 1/512 a component in [-0.5, 0.498]), uint8 (the int8 value + 128), binary (8 "
    "dimensions a byte, bit 1 where the component is > 0, the first dimension in the top bit, each byte "
    "- 128 as an integer in [-128, 127]) or ubinary (the same bytes, 0 to 255). A failed image's slot is [] "
    "in every format.")


def encoding_field(**kwargs) -> fields.String:
    """A request's ``encoding``: the format of the answer's vectors (``encodings.FORMATS``), float by default."""
    return fields.String(load_default=encodings.DEFAULT, validate=validate.OneOf(encodings.FORMATS),
                         metadata={"description": ENCODING_DESCRIPTION}, **kwargs)


def dimensions_refusal(native: int) -> str:
    """Why a ``dimensions`` other than the model's own is refused (every family says it so)."""
    return (f"This model's vectors have {native} dimensions: send {native} or leave dimensions out. CLIP models "
            "were not trained for shortened (Matryoshka) vectors, so a truncated one would rank poorly.")


class ModelWidth(fields.Integer):
    """``dimensions`` (OpenAI's parameter): accepted only as the model's own width, which it is anyway."""

    def __init__(self, *, strict: bool = True, **kwargs):
        super().__init__(strict=strict, validate=validate.Range(min=1), metadata={"description": (
            "The length of the vectors: only the model's own (the dimensions of every answer) is accepted, "
            "since CLIP models were not trained for shortened vectors; leave it out to get it.")}, **kwargs)

    def openapi_model(self, info) -> dict:
        """The one value accepted, for the OpenAPI document."""
        return {"enum": [info.dimensions]}

    def _deserialize(self, value, attr, data, **kwargs):
        number = super()._deserialize(value, attr, data, **kwargs)
        native = _pipeline().info.dimensions
        if number != native:
            raise ValidationError(dimensions_refusal(native))
        return number


def vector_field(description: str) -> fields.Raw:
    """An answer's vector, in any format: documented only (views write vectors with orjson, encodings.py)."""
    return fields.Raw(metadata={"description": description, "oneOf": [
        {"type": "array", "items": {"type": "number"}},
        {"type": "string", "format": "byte"}]})


# A toy 8-d unit vector, to show each format in the OpenAPI document (a real one has the model's width).
_EXAMPLE = np.array([0.4, -0.3, 0.35, 0.3, -0.45, 0.2, -0.35, 0.4], dtype=np.float32)
_EXAMPLE = np.round(_EXAMPLE / np.linalg.norm(_EXAMPLE), 4).astype(np.float32)


def example_vector(fmt: str):
    """The toy vector in ``fmt``, as an answer carries it."""
    value = encodings.to_json(_EXAMPLE[None], fmt)[0]
    return value if isinstance(value, str) else [round(x, 4) if isinstance(x, float) else x for x in value.tolist()]


def format_examples(answer) -> dict:
    """OpenAPI ``examples``, one a format: ``answer(fmt)`` is the body with a (toy, 8-d) vector in it."""
    return {fmt: {"summary": f"encoding: {fmt}", "value": answer(fmt)} for fmt in encodings.FORMATS}
