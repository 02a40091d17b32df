"""Marshmallow schemas of POST /classify (Hugging Face's zero-shot-image-classification shape) and POST /rank."""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from ...pipeline import RANK_SCORES
from ...zeroshot import DEFAULT_TEMPLATE, NAMED_TEMPLATES, Templates, template_problem
from ..common_schemas import (
    ImageInput,
    ItemErrorSchema,
    LimitedList,
    LimitedString,
    ModelInfoSchema,
    RequestSchema,
    StrictBoolean,
    scores_field,
)
from ..current import pipeline as _pipeline
from ..current import settings as _settings


class OneOrMany(fields.Field):
    """One ``inner`` value or a non-empty list of at most ``settings.value(max_items)`` of them."""

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
                                               "maxItems": settings.value(self.many.max_items)}]}


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
                                                        "as the tokenizer reads it (case, spacing and "
                                                        "Unicode form aside) and not blank."})
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
        blank = {i: ["A label may not be blank."] for i, label in enumerate(labels) if not label.strip()}
        if blank:
            raise ValidationError(blank, field_name="candidate_labels")
        templates = data.get("hypothesis_template")
        limit = _settings().limits.max_label_texts
        if templates is not None and len(labels) * len(templates) > limit:
            raise ValidationError(f"{len(labels)} labels x {len(templates)} templates is more than "
                                  f"{limit} prompts per request (CLIP_MAX_LABEL_TEXTS).", field_name="_schema")
        # Compared as the model reads them (after the prompt count is known to be bounded): labels the
        # tokenizer makes equal ("Cat" and "cat ") would get one vector and half the score each.
        same = _pipeline().same_labels(labels, templates) if templates is not None else {}
        if same:
            raise ValidationError({i: [f"The same label as candidate_labels[{j}] to the model, whose tokenizer "
                                       "ignores case, spacing and Unicode form; send each label once."]
                                   for i, j in same.items()}, field_name="candidate_labels")


class ClassifyRequestSchema(RequestSchema):
    inputs = OneOrMany(ImageInput(max_chars="max_url_chars"), max_items="max_urls", required=True, metadata={
        "description": "One image (an http(s) URL, a data: URI or raw base64), answered with a list of labels "
                       "and scores; or a list of them, answered with one such list per image."})
    parameters = fields.Nested(ClassifyParametersSchema, required=True)


class LabelScoreSchema(Schema):
    label = fields.String(required=True)
    score = fields.Float(required=True, metadata={
        "description": "The model's own probability (its `scores`, in GET /v1/models): softmax over the labels of "
                       "logit_scale x cosine for CLIP (they sum to 1); sigmoid(logit_scale x cosine + logit_bias) "
                       "for each label on its own for SigLIP (they need not)."})
    cosine = fields.Float(metadata={"description": "The raw cosine similarity (with return_cosine)."})


class ClassifyBatchSchema(ModelInfoSchema):
    results = fields.List(fields.List(fields.Nested(LabelScoreSchema)), required=True, metadata={
        "description": "One list per image, in order, best label first; [] for an image that failed."})
    errors = fields.List(fields.Nested(ItemErrorSchema), required=True)
    scores = scores_field(required=True)


QUERY_MODALITIES = ("text", "image")


class _RankForm(RequestSchema):
    """What both forms of POST /rank's body share."""

    top_n = fields.Integer(strict=True, validate=validate.Range(min=1), metadata={
        "description": "Return only the best n results (default: all)."})
    return_documents = StrictBoolean(load_default=False, metadata={
        "description": "Repeat each result's document (an image's data: URI only by its header)."})
    scores = fields.String(load_default="cosine", validate=validate.OneOf(RANK_SCORES), metadata={
        "description": "cosine: the cosine similarity; probability: the model's own probabilities (a softmax "
                       "over the candidates of logit_scale x cosine for CLIP, sigmoid(logit_scale x cosine + "
                       "logit_bias) each for SigLIP); softmax or sigmoid: the same, named, which must be the "
                       "model's (else 422)."})


class TextQueryRankSchema(_RankForm):
    """Images ranked against a text (query_modality "text", the default)."""

    query = LimitedString(max_chars="max_text_chars", required=True, metadata={
        "description": "The text the images are ranked against."})
    documents = LimitedList(ImageInput(max_chars="max_url_chars"), max_items="max_urls", required=True,
                            validate=validate.Length(min=1), metadata={
                                "description": "The images to rank: http(s) URLs, data: URIs or raw base64."})
    # Documented as the one value that picks this form; any other value than "image" is
    # loaded here too, so the validator names both.
    query_modality = fields.String(load_default="text", validate=validate.OneOf(QUERY_MODALITIES),
                                   metadata={"enum": ["text"]})


class ImageQueryRankSchema(_RankForm):
    """Texts ranked against an image (query_modality "image")."""

    query = ImageInput(max_chars="max_url_chars", required=True, metadata={
        "description": "The image the texts are ranked against: an http(s) URL, a data: URI or raw base64."})
    documents = LimitedList(LimitedString(max_chars="max_text_chars"), max_items="max_texts", required=True,
                            validate=validate.Length(min=1), metadata={"description": "The texts to rank."})
    query_modality = fields.String(required=True, validate=validate.OneOf(["image"]))


class RankRequestSchema(Schema):
    """POST /rank's body: one of its two forms, as ``query_modality`` says (documented as their oneOf)."""

    FORMS = {"text": TextQueryRankSchema, "image": ImageQueryRankSchema}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._forms = {name: form() for name, form in self.FORMS.items()}

    def load(self, data, **kwargs):
        modality = data.get("query_modality") if isinstance(data, dict) else None
        return self._forms["image" if modality == "image" else "text"].load(data, **kwargs)


class RankResultSchema(Schema):
    index = fields.Integer(required=True, metadata={"description": "Position of the document in the request."})
    relevance_score = fields.Float(required=True)
    document = fields.String(metadata={"description": "The document (with return_documents)."})


class RankingSchema(ModelInfoSchema):
    results = fields.List(fields.Nested(RankResultSchema), required=True, metadata={
        "description": "Best first; documents that failed are left out (see errors)."})
    errors = fields.List(fields.Nested(ItemErrorSchema), required=True)
    scores = scores_field(required=True)
