"""POST /classify and POST /rank: CLIP's own zero-shot arithmetic, on the pipeline, against open_clip."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

from clip_service import create_app

from .helpers import as_image

LABELS = ["a cat", "a cup of coffee", "a camera", "a beach"]
PHOTOS = ["chelsea_0.jpg", "coffee_0.jpg", "camera.png"]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def reference_scores(reference_model, photo: bytes, labels, templates) -> tuple[np.ndarray, np.ndarray]:
    """open_clip's zero-shot classifier on the same image: (probabilities, cosines) per label."""
    model, preprocess, tokenizer = reference_model
    with torch.no_grad():
        image = model.encode_image(preprocess(as_image(photo))[None], normalize=True)
        weights = build_zero_shot_classifier(model, tokenizer, labels, templates, num_classes_per_batch=None)
        cosines = (image @ weights)[0]
        probabilities = (model.logit_scale.exp() * cosines).softmax(dim=-1)
    return probabilities.double().numpy(), cosines.double().numpy()


def _by_label(answer: list[dict], key: str) -> list[float]:
    scores = {entry["label"]: entry[key] for entry in answer}
    return [scores[label] for label in LABELS]


@pytest.mark.parametrize("template, reference", [
    (None, ["This is a photo of {}."]),                            # Hugging Face's default
    ("a blurry photo of {}", ["a blurry photo of {}"]),
    (["a photo of {}.", "art of {}", "{} in the wild"], ["a photo of {}.", "art of {}", "{} in the wild"]),
    ("simple_imagenet", SIMPLE_IMAGENET_TEMPLATES),
    ("openai_imagenet", OPENAI_IMAGENET_TEMPLATES),
])
def test_scores_equal_open_clips_zero_shot_classifier(client, photos, reference_model, template, reference):
    parameters = {"candidate_labels": LABELS, "return_cosine": True}
    if template is not None:
        parameters["hypothesis_template"] = template
    response = client.post("/classify", json={"inputs": _b64(photos["chelsea_0.jpg"]), "parameters": parameters})
    assert response.status_code == 200, response.get_data(as_text=True)
    answer = response.get_json()
    probabilities, cosines = reference_scores(reference_model, photos["chelsea_0.jpg"], LABELS, reference)
    assert np.abs(np.array(_by_label(answer, "score")) - probabilities).max() <= 1e-5
    assert np.abs(np.array(_by_label(answer, "cosine")) - cosines).max() <= 1e-5
    assert sum(entry["score"] for entry in answer) == pytest.approx(1.0, abs=1e-9)
    scores = [entry["score"] for entry in answer]
    assert scores == sorted(scores, reverse=True) and {e["label"] for e in answer} == set(LABELS)


def test_a_batch_keeps_order_and_a_failed_image_leaves_an_empty_slot(client, image_server, photos, reference_model):
    inputs = [image_server.url("/chelsea_0.jpg"), image_server.url("/missing.jpg"),
              "data:image/png;base64," + _b64(photos["camera.png"]), _b64(photos["coffee_0.jpg"])]
    body = client.post("/classify", json={"inputs": inputs, "parameters": {"candidate_labels": LABELS}}).get_json()
    assert [len(r) for r in body["results"]] == [4, 0, 4, 4]
    assert body["errors"] == [{"index": 1, "url": inputs[1], "code": "upstream_status",
                               "message": "the image host answered HTTP 404"}]
    for slot, photo in ((0, "chelsea_0.jpg"), (2, "camera.png"), (3, "coffee_0.jpg")):
        expected, _ = reference_scores(reference_model, photos[photo], LABELS, ["This is a photo of {}."])
        assert np.abs(np.array(_by_label(body["results"][slot], "score")) - expected).max() <= 1e-5
    assert body["dimensions"] == 32 and "cosine" not in body["results"][0][0]


def test_the_one_image_of_the_single_form_failing_is_422_with_its_code(client, image_server):
    response = client.post("/classify", json={"inputs": image_server.url("/missing.jpg"),
                                              "parameters": {"candidate_labels": LABELS}})
    assert response.status_code == 422
    assert response.get_json()["errors"] == {"inputs": ["upstream_status: the image host answered HTTP 404"]}


def test_a_cached_label_vector_equals_a_fresh_one_and_costs_no_pass(tiny_embedder, image_server):
    from clip_service.zeroshot import Templates

    templates = Templates.from_spec(["a photo of {}.", "a drawing of {}."])
    cached_app = create_app({"TESTING": True}, embedder=tiny_embedder)
    pipeline = cached_app.extensions["clip_pipeline"]
    embedded = []
    pipeline.on_embedded = lambda modality, count: embedded.append((modality, count))
    first = pipeline.label_vectors(LABELS, templates)
    again = pipeline.label_vectors(list(reversed(LABELS)), templates)
    assert embedded == [("text", 8)]  # the second call embedded nothing
    fresh = create_app({"TESTING": True, "label_cache_mb": 0}, embedder=tiny_embedder)
    recomputed = fresh.extensions["clip_pipeline"].label_vectors(LABELS, templates)
    assert np.array_equal(first, recomputed) and np.array_equal(again, first[::-1])
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-6)


def test_a_label_cache_of_zero_keeps_nothing(tiny_embedder):
    from clip_service.zeroshot import Templates

    pipeline = create_app({"TESTING": True, "label_cache_mb": 0}, embedder=tiny_embedder).extensions["clip_pipeline"]
    pipeline.label_vectors(LABELS, Templates.from_spec("{}"))
    assert len(pipeline.label_cache) == 0


def test_labels_with_braces_are_left_alone(client, photos):
    body = client.post("/classify", json={"inputs": _b64(photos["camera.png"]),
                                          "parameters": {"candidate_labels": ["{x}", "a {} b"]}}).get_json()
    assert {entry["label"] for entry in body} == {"{x}", "a {} b"}


@pytest.fixture(scope="module")
def small_limits_client(tiny_embedder):
    return create_app({"TESTING": True, "max_labels": 4, "max_templates": 3, "max_label_chars": 20,
                       "max_label_texts": 6, "max_urls": 2}, embedder=tiny_embedder).test_client()


GOOD_IMAGE = _b64(open(__file__.rsplit("/", 1)[0] + "/fixtures/camera.png", "rb").read())


@pytest.mark.parametrize("body, field", [
    ({"inputs": GOOD_IMAGE}, "parameters"),
    ({"parameters": {"candidate_labels": ["a"]}}, "inputs"),
    ({"inputs": [], "parameters": {"candidate_labels": ["a"]}}, "inputs"),
    ({"inputs": [GOOD_IMAGE] * 3, "parameters": {"candidate_labels": ["a"]}}, "inputs"),
    ({"inputs": 7, "parameters": {"candidate_labels": ["a"]}}, "inputs"),
    ({"inputs": GOOD_IMAGE, "parameters": {}}, "parameters"),
    ({"inputs": GOOD_IMAGE, "parameters": {"candidate_labels": []}}, "parameters"),
    ({"inputs": GOOD_IMAGE, "parameters": {"candidate_labels": "cat"}}, "parameters"),
    ({"inputs": GOOD_IMAGE, "parameters": {"candidate_labels": ["a", "b", "c", "d", "e"]}}, "parameters"),
    ({"inputs": GOOD_IMAGE, "parameters": {"candidate_labels": ["cat", "dog", "cat"]}}, "parameters"),
    ({"inputs": GOOD_IMAGE, "parameters": {"candidate_labels": ["cat", "  "]}}, "parameters"),
    ({"inputs": GOOD_IMAGE, "parameters": {"candidate_labels": ["x" * 21]}}, "parameters"),
    ({"inputs": GOOD_IMAGE, "parameters": {"candidate_labels": ["a"], "hypothesis_template": "no slot"}}, "parameters"),
    ({"inputs": GOOD_IMAGE, "parameters": {"candidate_labels": ["a"], "hypothesis_template": "{} and {}"}},
     "parameters"),
    ({"inputs": GOOD_IMAGE, "parameters": {"candidate_labels": ["a"], "hypothesis_template": []}}, "parameters"),
    ({"inputs": GOOD_IMAGE, "parameters": {"candidate_labels": ["a"], "hypothesis_template": ["{}"] * 4}},
     "parameters"),
    ({"inputs": GOOD_IMAGE, "parameters": {"candidate_labels": ["a", "b", "c"],
                                           "hypothesis_template": ["{}", "a {}", "b {}"]}}, "parameters"),
    ({"inputs": GOOD_IMAGE, "parameters": {"candidate_labels": ["a"], "return_cosine": "yes please"}},
     "parameters"),
    ({"inputs": GOOD_IMAGE, "parameters": {"candidate_labels": ["a"]}, "extra": 1}, "_schema"),
])
def test_bad_classify_requests_are_422_and_the_service_stays_up(small_limits_client, body, field):
    response = small_limits_client.post("/classify", json=body)
    assert response.status_code == 422, response.get_data(as_text=True)
    envelope = response.get_json()
    assert set(envelope) == {"code", "status", "message", "errors"} and field in envelope["errors"]
    still = small_limits_client.post("/classify", json={"inputs": GOOD_IMAGE,
                                                        "parameters": {"candidate_labels": ["a", "b"]}})
    assert still.status_code == 200 and len(still.get_json()) == 2


def test_the_label_limit_counts_templates_too(small_limits_client):
    response = small_limits_client.post("/classify", json={"inputs": GOOD_IMAGE, "parameters": {
        "candidate_labels": ["a", "b", "c"], "hypothesis_template": ["{}", "a {}", "b {}"]}})
    assert "CLIP_MAX_LABEL_TEXTS" in str(response.get_json()["errors"])


@pytest.mark.parametrize("labels, template, same", [
    (["Cat", "cat"], None, {1: 0}),
    (["cat", "cat "], None, {1: 0}),
    (["caf\u00e9", "cafe\u0301"], None, {1: 0}),  # NFC and NFD
    (["a dog", "CAT", "a  Dog", "cat\t"], "openai_imagenet", {2: 0, 3: 1}),
])
def test_labels_the_tokenizer_reads_alike_are_422_naming_both(client, labels, template, same):
    # They would get one vector, and each exactly half the score.
    parameters = {"candidate_labels": labels, **({"hypothesis_template": template} if template else {})}
    response = client.post("/classify", json={"inputs": GOOD_IMAGE, "parameters": parameters})
    assert response.status_code == 422, response.get_data(as_text=True)
    errors = response.get_json()["errors"]["parameters"]["candidate_labels"]
    assert {int(i): message for i, message in errors.items()} == {
        i: [f"The same label as candidate_labels[{j}] to the model, whose tokenizer ignores case, spacing and "
            "Unicode form; send each label once."] for i, j in same.items()}


@pytest.mark.parametrize("labels, template", [
    (["cat", "cats"], None),
    (["cat", "cat "], "{}s"),  # "cats" and "cat s": two prompts the model reads apart
])
def test_labels_the_tokenizer_reads_apart_are_scored(client, labels, template):
    parameters = {"candidate_labels": labels, **({"hypothesis_template": template} if template else {})}
    response = client.post("/classify", json={"inputs": GOOD_IMAGE, "parameters": parameters})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert sorted(entry["label"] for entry in response.get_json()) == sorted(labels)


def test_a_label_set_sent_again_is_not_tokenized_again(tiny_embedder, monkeypatch):
    from clip_service.zeroshot import Templates

    pipeline = create_app({"TESTING": True}, embedder=tiny_embedder).extensions["clip_pipeline"]
    templates = Templates.from_spec(["a photo of {}.", "a drawing of {}."])
    tokenize, tokenized = tiny_embedder.tokenize, []
    monkeypatch.setattr(tiny_embedder, "tokenize", lambda texts: tokenized.append(len(texts)) or tokenize(texts))
    assert pipeline.same_labels(["Cat", "dog", "cat "], templates) == {2: 0}
    assert pipeline.same_labels(["dog", "cat ", "bird"], templates) == {}
    assert tokenized == [6, 2]  # the second time, only "bird"'s two prompts


# --- /rank ---------------------------------------------------------------------------------------

def _reference_vectors(reference_model, photos, names, texts):
    model, preprocess, tokenizer = reference_model
    with torch.no_grad():
        images = model.encode_image(torch.stack([preprocess(as_image(photos[n])) for n in names]),
                                    normalize=True).numpy()
        text = model.encode_text(tokenizer(texts), normalize=True).numpy()
    return images, text, float(model.logit_scale.detach().exp())


def test_a_text_query_ranks_images_by_cosine(client, image_server, photos, reference_model):
    documents = [image_server.url(f"/{n}") for n in PHOTOS]
    documents.insert(1, image_server.url("/missing.jpg"))
    body = client.post("/rank", json={"query": "a cup of coffee", "documents": documents,
                                      "return_documents": True}).get_json()
    images, text, _ = _reference_vectors(reference_model, photos, PHOTOS, ["a cup of coffee"])
    expected = dict(zip([0, 2, 3], images @ text[0]))
    assert [r["index"] for r in body["results"]] == sorted(expected, key=lambda i: -expected[i])
    for result in body["results"]:
        assert result["relevance_score"] == pytest.approx(expected[result["index"]], abs=1e-5)
        assert result["document"] == documents[result["index"]]
    assert [(e["index"], e["code"]) for e in body["errors"]] == [(1, "upstream_status")]


def test_an_image_query_ranks_texts_with_top_n_and_softmax(client, photos, reference_model):
    texts = ["a cat", "a dog", "coffee", "a red bus"]
    body = client.post("/rank", json={"query": _b64(photos["chelsea_0.jpg"]), "query_modality": "image",
                                      "documents": texts, "scores": "softmax", "top_n": 2}).get_json()
    images, text, scale = _reference_vectors(reference_model, photos, ["chelsea_0.jpg"], texts)
    logits = scale * (text @ images[0]).astype(np.float64)
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    best = list(np.argsort(-expected)[:2])
    assert [r["index"] for r in body["results"]] == best
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx(list(expected[best]), abs=1e-5)
    assert "document" not in body["results"][0] and body["errors"] == []


def test_a_failed_query_image_is_422_with_its_code(client, image_server):
    response = client.post("/rank", json={"query": image_server.url("/missing.jpg"), "query_modality": "image",
                                          "documents": ["a cat"]})
    assert response.status_code == 422
    assert response.get_json()["errors"] == {"query": ["upstream_status: the image host answered HTTP 404"]}


@pytest.mark.parametrize("body, field", [
    ({"documents": ["x"]}, "query"),
    ({"query": "a cat"}, "documents"),
    ({"query": "a cat", "documents": []}, "documents"),
    ({"query": "a cat", "documents": [GOOD_IMAGE] * 3}, "documents"),   # max_urls 2 when documents are images
    ({"query": "x" * 10_001, "documents": [GOOD_IMAGE]}, "query"),
    ({"query": "a cat", "documents": ["http://example.com/" + "a" * 3000]}, "documents"),
    ({"query": "a cat", "documents": [GOOD_IMAGE], "top_n": 0}, "top_n"),
    ({"query": "a cat", "documents": [GOOD_IMAGE], "query_modality": "audio"}, "query_modality"),
    ({"query": "a cat", "documents": [GOOD_IMAGE], "scores": "logits"}, "scores"),
    ({"query": 3, "documents": [GOOD_IMAGE]}, "query"),
])
def test_bad_rank_requests_are_422_and_the_service_stays_up(small_limits_client, body, field):
    response = small_limits_client.post("/rank", json=body)
    assert response.status_code == 422, response.get_data(as_text=True)
    assert field in response.get_json()["errors"]
    assert small_limits_client.post("/rank", json={"query": "a cat", "documents": [GOOD_IMAGE]}).status_code == 200


@pytest.mark.parametrize("scores, top_n, order", [
    ([0.1, 0.3, 0.2], None, [1, 2, 0]),
    ([0.2, np.nan, 0.2, 0.5], None, [3, 0, 2]),  # ties keep their order; NaN (a failed candidate) is left out
    ([0.2, 0.1, 0.3], 2, [2, 0]),
    ([np.nan, np.nan], None, []),
])
def test_best_first_orders_scores_and_cuts_at_top_n(scores, top_n, order):
    from clip_service.zeroshot import best_first

    assert best_first(np.array(scores), top_n) == order


def test_the_document_describes_both_classify_shapes_with_examples(client):
    spec = client.get("/openapi.json").get_json()
    operation = spec["paths"]["/classify"]["post"]
    shapes = operation["responses"]["200"]["content"]["application/json"]["schema"]["oneOf"]
    assert shapes[0]["type"] == "array" and shapes[1] == {"$ref": "#/components/schemas/ClassifyBatch"}
    assert "example" in operation["requestBody"]["content"]["application/json"]
    assert "example" in spec["paths"]["/rank"]["post"]["requestBody"]["content"]["application/json"]
    labels = spec["components"]["schemas"]["ClassifyParameters"]["properties"]["candidate_labels"]
    assert labels["maxItems"] == 1000
