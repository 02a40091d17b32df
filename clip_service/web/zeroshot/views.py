"""POST /classify (zero-shot labels for images) and POST /rank (one query against candidates)."""

from __future__ import annotations

from flask_smorest import Blueprint

from ...images.sources import describe
from ...pipeline import LabelScore, QueryFailed, WrongObjective
from .. import current
from ..common_schemas import item_errors
from ..errors import ApiError
from ..jsonio import JsonBodyParser, json_response
from ..openapi import documents_body_errors
from .schemas import (
    ClassifyBatchSchema,
    ClassifyRequestSchema,
    LabelScoreSchema,
    RankingSchema,
    RankRequestSchema,
)

bp = Blueprint("zeroshot", __name__, description="Zero-shot labelling and ranking with CLIP's own arithmetic.")
bp.ARGUMENTS_PARSER = JsonBodyParser()  # 415/400 for bodies that are not UTF-8 JSON

_CLASSIFY_EXAMPLE = {"inputs": "https://example.com/cat.jpg",
                     "parameters": {"candidate_labels": ["cat", "dog", "car"],
                                    "hypothesis_template": "This is a photo of {}."}}
_RANK_EXAMPLE = {"query": "a photo of a cat", "documents": ["https://example.com/cat.jpg",
                                                            "https://example.com/car.jpg"], "top_n": 1}


def _label_scores(scores: list[LabelScore], with_cosine: bool) -> list[dict]:
    return [{"label": s.label, "score": s.probability, **({"cosine": s.cosine} if with_cosine else {})}
            for s in scores]


def _document(body: dict, index: int) -> dict:
    """With return_documents, a result's document: a text as sent, an image as errors name it (describe)."""
    if not body["return_documents"]:
        return {}
    document = body["documents"][index]
    return {"document": document if body["query_modality"] == "image" else describe(document)}


@bp.route("/classify", methods=["POST"])
@bp.arguments(ClassifyRequestSchema, example=_CLASSIFY_EXAMPLE)
@bp.response(200, ClassifyBatchSchema, description="One image: a list of labels and scores, best first. A list "
                                                    "of images: one such list per image, with per-item errors.")
@bp.doc(responses={200: {"content": {"application/json": {"schema": {"oneOf": [
    {"type": "array", "items": LabelScoreSchema}, ClassifyBatchSchema]}}}}})
@bp.alt_response(422, description="Not a valid request; or the one image sent could not be used (errors.inputs "
                                  "names its code).", schema=None)
@documents_body_errors(bp)
def classify(body):
    """Label images zero-shot with the model's own scores: softmax over the labels (CLIP) or a sigmoid each (SigLIP)."""
    params, single = body["parameters"], isinstance(body["inputs"], str)
    result = current.pipeline().classify([body["inputs"]] if single else body["inputs"], params["candidate_labels"],
                                         params["hypothesis_template"])
    if single:
        if result.failures:
            error = result.failures[0].error
            raise ApiError(422, f"the image could not be used: {error.message}",
                           errors={"inputs": [f"{error.code}: {error.message}"]}, code=error.code)
        return json_response(_label_scores(result.images[0], params["return_cosine"]))
    results = [[] if scores is None else _label_scores(scores, params["return_cosine"])
               for scores in result.images]
    return json_response({"results": results, "errors": item_errors(result.failures),
                          "scores": current.pipeline().scores, **current.model_info()})


@bp.route("/rank", methods=["POST"])
@bp.arguments(RankRequestSchema, example=_RANK_EXAMPLE)
# Documented as its two forms (RankRequestSchema itself only picks one).
@bp.doc(requestBody={"content": {"application/json": {"schema": {
    "oneOf": list(RankRequestSchema.FORMS.values())}}}})
@bp.response(200, RankingSchema)
@bp.alt_response(422, description="Not a valid request; or the query image could not be used (errors.query "
                                  "names its code); or scores names the other objective than the model's "
                                  "(errors.scores).", schema=None)
@documents_body_errors(bp)
def rank(body):
    """Rank candidates against one query: images against a text, or texts against an image."""
    image_query = body["query_modality"] == "image"
    try:
        ranking = current.pipeline().rank(body["query"], body["documents"], query_is_image=image_query,
                                          by=body["scores"], top_n=body.get("top_n"))
    except WrongObjective as wrong:
        raise ApiError(422, str(wrong), errors={"scores": [str(wrong)]}) from None
    except QueryFailed as failed:
        error = failed.failure.error
        raise ApiError(422, f"the query image could not be used: {error.message}",
                       errors={"query": [f"{error.code}: {error.message}"]}, code=error.code) from None
    results = [{"index": r.index, "relevance_score": r.score, **_document(body, r.index)} for r in ranking.results]
    return json_response({"results": results, "errors": item_errors(ranking.failures),
                          "scores": current.pipeline().scores, **current.model_info()})
