"""Marshmallow schemas of POST /classify (Hugging Face's zero-shot-image-classification shape) and POST /rank."""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from ...images.sources import is_data_uri
from ...zeroshot import DEFAULT_TEMPLATE, NAMED_TEMPLATES, Templates, template_problem
from ..common_schemas import (
    ImageInput,
    ItemErrorSchema,
    LimitedList,
    LimitedString,
    ModelInfoSchema,
    RequestSchema,
    StrictBoolean,
)
from ..current import settings as _settings


class OneOrMany(fields.Field):
    """One ``inner`` value or a non-empty list of at most ``getattr(settings, max_items)`` of them."""

    def __init__(self, inner: fields.Field, *, max_items: str, **kwargs):
        super().__init__(**kwargs)
        self.inner = inner
        self.many = LimitedList(inner, max_items=max_items, validate=validate.Length(min=1))

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, list):
            return self.many.deserialize(value, attr, data, **kwargs)
        return self.inner.deserialize(value, attr, data, **kwargs)

    def openapi(self, settings) -> dict:
        return {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1,
                                               "maxItems": getattr(settings, self.many.max_items)}]}


class TemplatesField(OneOrMany):
    """``hypothesis_template``: a named set, one template with ``{}``, or a list of them; loaded as ``Templates``."""

    def __init__(self, **kwargs):
        super().__init__(LimitedString(max_chars="max_label_chars"), max_items="max_templates", **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        spec = super()._deserialize(value, attr, data, **kwargs)
        if isinstance(spec, str) and spec in NAMED_TEMPLATES:
            return Templates.from_spec(spec)
        problems = {i: [problem] for i, t in enumerate([spec] if isinstance(spec, str) else spec)
                    if (problem := template_problem(t))}
        if problems:
            raise ValidationError(problems[0] if isinstance(spec, str) else problems)
        return Templates.from_spec(spec)


def _labels(**kwargs):
    return LimitedList(LimitedString(max_chars="max_label_chars"), max_items="max_labels", **kwargs)


class ClassifyParametersSchema(RequestSchema):
    candidate_labels = _labels(required=True, validate=validate.Length(min=1, error="Send at least one label."),
                               metadata={"description": "The labels to choose from; each must be distinct "
                                                        "and not blank."})
    hypothesis_template = TemplatesField(
        load_default=lambda: Templates.from_spec(DEFAULT_TEMPLATE),
        metadata={"description": f"A prompt with {{}} where the label goes (default {DEFAULT_TEMPLATE!r}); a list "
                                 f"of them, whose label vectors are averaged (CLIP's prompt ensembling); or the "
                                 f"name of one of open_clip's sets: {', '.join(sorted(NAMED_TEMPLATES))}."})
    return_cosine = StrictBoolean(load_default=False, metadata={
        "description": "Also return each label's raw cosine similarity to the image."})

    @validates_schema
    def _labels_are_usable(self, data, **_):
        labels = data.get("candidate_labels") or []
        errors, first_seen = {}, {}
        for i, label in enumerate(labels):
            if not label.strip():
                errors[i] = ["A label may not be blank."]
            elif label in first_seen:
                errors[i] = [f"The same label as candidate_labels[{first_seen[label]}]; send each label once."]
            first_seen.setdefault(label, i)
        if errors:
            raise ValidationError(errors, field_name="candidate_labels")
        templates = data.get("hypothesis_template")
        limit = _settings().max_label_texts
        if templates is not None and len(labels) * len(templates) > limit:
            raise ValidationError(f"{len(labels)} labels x {len(templates)} templates is more than "
                                  f"{limit} prompts per request (CLIP_MAX_LABEL_TEXTS).", field_name="_schema")


class ClassifyRequestSchema(RequestSchema):
    inputs = OneOrMany(ImageInput(max_chars="max_url_chars"), max_items="max_urls", required=True, metadata={
        "description": "One image (an http(s) URL, a data: URI or raw base64), answered with a list of labels "
                       "and scores; or a list of them, answered with one such list per image."})
    parameters = fields.Nested(ClassifyParametersSchema, required=True)


class LabelScoreSchema(Schema):
    label = fields.String(required=True)
    score = fields.Float(required=True, metadata={
        "description": "Softmax over the labels of the model's logit scale x cosine (they sum to 1)."})
    cosine = fields.Float(metadata={"description": "The raw cosine similarity (with return_cosine)."})


class ClassifyBatchSchema(ModelInfoSchema):
    results = fields.List(fields.List(fields.Nested(LabelScoreSchema)), required=True, metadata={
        "description": "One list per image, in order, best label first; [] for an image that failed."})
    errors = fields.List(fields.Nested(ItemErrorSchema), required=True)


QUERY_MODALITIES = ("text", "image")
SCORES = ("cosine", "softmax")


class RankRequestSchema(RequestSchema):
    query = fields.String(required=True, metadata={
        "description": "A text (query_modality text, the default) or an image: http(s) URL, data: URI or raw "
                       "base64 (query_modality image)."})
    documents = fields.List(fields.String(), required=True, validate=validate.Length(min=1), metadata={
        "description": "The candidates: images when the query is a text (at most CLIP_MAX_URLS), texts when "
                       "it is an image (at most CLIP_MAX_TEXTS)."})
    query_modality = fields.String(load_default="text", validate=validate.OneOf(QUERY_MODALITIES))
    top_n = fields.Integer(strict=True, validate=validate.Range(min=1), metadata={
        "description": "Return only the best n results (default: all)."})
    return_documents = StrictBoolean(load_default=False, metadata={
        "description": "Repeat each result's document (an image's data: URI only by its header)."})
    scores = fields.String(load_default="cosine", validate=validate.OneOf(SCORES), metadata={
        "description": "cosine: the cosine similarity; softmax: softmax over the candidates of the model's "
                       "logit scale x cosine."})

    @validates_schema
    def _limits_of_each_side(self, data, **_):
        if "query" not in data or "documents" not in data:
            return
        settings = _settings()
        image_query = data.get("query_modality") == "image"
        documents = data["documents"]
        limit = settings.max_texts if image_query else settings.max_urls
        if len(documents) > limit:
            raise ValidationError(f"At most {limit} items per request.", field_name="documents")
        errors = {}
        for i, item in enumerate(documents):
            problem = _check(item, image=not image_query, settings=settings)
            if problem:
                errors[i] = [problem]
        if errors:
            raise ValidationError(errors, field_name="documents")
        problem = _check(data["query"], image=image_query, settings=settings)
        if problem:
            raise ValidationError(problem, field_name="query")

    @post_load
    def _images_as_sources(self, data, **_):
        image_query = data["query_modality"] == "image"
        if image_query:
            data["query"] = _as_source(data["query"])
        else:
            data["documents"] = [_as_source(d) for d in data["documents"]]
        return data


def _check(value: str, *, image: bool, settings) -> str | None:
    if image:
        if is_data_uri(value) or "://" not in value[:16]:
            return None  # the image itself: bounded by the body and CLIP_FETCH_MAX_BYTES
        if len(value) > settings.max_url_chars:
            return f"Longer than {settings.max_url_chars} characters."
        if any("\ud800" <= ch <= "\udfff" for ch in value):
            return "Not a valid URL: it holds a lone surrogate."
        return None
    if len(value) > settings.max_text_chars:
        return f"Longer than {settings.max_text_chars} characters."
    return None


def _as_source(value: str) -> str:
    return value if is_data_uri(value) or "://" in value[:16] else "data:image/*;base64," + value


class RankResultSchema(Schema):
    index = fields.Integer(required=True, metadata={"description": "Position of the document in the request."})
    relevance_score = fields.Float(required=True)
    document = fields.String(metadata={"description": "The document (with return_documents)."})


class RankingSchema(ModelInfoSchema):
    results = fields.List(fields.Nested(RankResultSchema), required=True, metadata={
        "description": "Best first; documents that failed are left out (see errors)."})
    errors = fields.List(fields.Nested(ItemErrorSchema), required=True)
