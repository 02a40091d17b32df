"""Every model family the service serves, each with its own arithmetic (issue #30).

For each family a fixed-seed random checkpoint of a small registered variant of
the same architecture (tests/model_configs/clip-service-tiny-*.json: the same
tower kinds, pooling, masks, activations and tokenizer as the full config, fewer
and narrower layers): the vectors are open_clip's own ``encode_image`` /
``encode_text`` within 1e-5 (fp32), ``/classify`` and ``/rank`` score with the
family's objective (softmax, or SigLIP's sigmoid with its bias) within 1e-5, and
a real ``gunicorn wsgi:app`` answers every route. The full-size SigLIP2 and
MobileCLIP2-S0 are checked once each (e2e).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import pytest
import requests
import torch
from PIL import Image

from clip_service import create_app
from clip_service.model import families
from clip_service.model.embedder import ClipEmbedder
from clip_service.model.errors import ModelLoadError, UnsupportedModelError
from clip_service.model.hub_tokenizer import HubTokenizer
from clip_service.model.loading import load_model

from .helpers import FIXTURES, ROOT, TESTS
from .support.gunicorn import GunicornProcess
from .support.hub_tokenizers import write_hub_tokenizer


@dataclass(frozen=True)
class Family:
    full: str  # the open_clip architecture users name
    tiny: str  # its small registered variant
    tokenizer: str | None  # the kind of Hugging Face tokenizer (support/hub_tokenizers.py), or CLIP's
    scores: str


FAMILIES = [
    Family("ViT-B-32-quickgelu", "clip-service-tiny-quickgelu", None, "softmax"),
    Family("ViT-L-14", "clip-service-tiny-l14", None, "softmax"),
    Family("RN50", "clip-service-tiny-rn", None, "softmax"),
    Family("convnext_base", "clip-service-tiny-convnext", None, "softmax"),
    Family("ViT-B-16-SigLIP", "clip-service-tiny-siglip", "t5", "sigmoid"),
    Family("ViT-B-16-SigLIP2", "clip-service-tiny-siglip2", "gemma", "sigmoid"),
    Family("MobileCLIP2-S0", "clip-service-tiny-mobileclip2", None, "softmax"),
]
IDS = [f.full for f in FAMILIES]
for family in FAMILIES:
    open_clip.add_model_config(TESTS / "model_configs" / f"{family.tiny}.json")

TEXTS = ["a photo of a cat", "", "Two DOGS playing with a red ball, in a park at sunset!", "café 東京 🚀",
         "word " * 120]  # the last is longer than any context: truncated as the family's tokenizer does
LABELS = ["cat", "dog", "a diagram", "car"]
TEMPLATE = "This is a photo of {}."


def _photos() -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in sorted(FIXTURES.iterdir()) if p.suffix in (".jpg", ".png")]


def _data_uri(path: Path) -> str:
    mime = "image/png" if path.suffix == ".png" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def _write_checkpoint(model_name: str, path: Path) -> Path:
    """A fixed-seed random checkpoint; a SigLIP's logit scale and bias set so its sigmoids are not all ~0."""
    torch.manual_seed(0)
    model = open_clip.create_model(model_name, pretrained=None)
    state = model.state_dict()
    if "logit_bias" in state:
        state["logit_scale"] = torch.full_like(state["logit_scale"], float(np.log(20.0)))
        state["logit_bias"] = torch.full_like(state["logit_bias"], -1.5)
    torch.save(state, path)
    return path


@dataclass
class Loaded:
    family: Family
    checkpoint: Path
    tokenizer_dir: str
    embedder: ClipEmbedder
    reference: torch.nn.Module  # open_clip's model from the same file, as open_clip builds it
    preprocess: object  # open_clip's transform
    tokenizer: object  # open_clip's tokenizer (HFTokenizer where transformers is installed)


def _reference_tokenizer(family: Family, tokenizer_dir: str):
    if family.tokenizer is None:
        return open_clip.get_tokenizer(family.tiny)
    config = open_clip.get_model_config(family.tiny)["text_cfg"]
    try:
        from open_clip.tokenizer import HFTokenizer

        return HFTokenizer(tokenizer_dir, context_length=config["context_length"], **config["tokenizer_kwargs"])
    except ImportError:  # transformers is not a dependency: the same ids are checked where it is installed
        return HubTokenizer(tokenizer_dir, context_length=config["context_length"], **config["tokenizer_kwargs"])


_LOADED: dict[str, Loaded] = {}


@pytest.fixture(params=FAMILIES, ids=IDS)
def loaded(request, tmp_path_factory) -> Loaded:
    """The service's embedder for a family's small variant, and open_clip's own model from the same checkpoint."""
    family = request.param
    if family.full not in _LOADED:
        folder = tmp_path_factory.mktemp(family.tiny)
        checkpoint = _write_checkpoint(family.tiny, folder / "weights.pt")
        tokenizer_dir = str(write_hub_tokenizer(folder / "tokenizer", family.tokenizer)) if family.tokenizer else ""
        embedder = ClipEmbedder.load(family.tiny, str(checkpoint), "cpu", precision="fp32",
                                     tokenizer_dir=tokenizer_dir)
        reference, _, preprocess = open_clip.create_model_and_transforms(family.tiny, pretrained=str(checkpoint))
        reference.eval()
        families.prepare(reference)  # MobileCLIP as open_clip's README runs it (unfolded: its own test)
        _LOADED[family.full] = Loaded(family, checkpoint, tokenizer_dir, embedder, reference, preprocess,
                                      _reference_tokenizer(family, tokenizer_dir))
    return _LOADED[family.full]


def _reference_vectors(loaded: Loaded, texts=(), images=()) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        text = loaded.reference.encode_text(loaded.tokenizer(list(texts)), normalize=True).numpy() if texts else None
        image = loaded.reference.encode_image(torch.stack([loaded.preprocess(i) for i in images]),
                                              normalize=True).numpy() if images else None
    return text, image


def _expected_scores(loaded: Loaded, cosines: np.ndarray) -> np.ndarray:
    """open_clip's formula for the family: softmax(logit_scale x cos), or sigmoid(logit_scale x cos + logit_bias)."""
    model = loaded.reference
    with torch.no_grad():
        logits = torch.from_numpy(cosines).double() * model.logit_scale.exp().double()
        if loaded.family.scores == "sigmoid":
            return torch.sigmoid(logits + model.logit_bias.double()).numpy()
        return logits.softmax(dim=-1).numpy()


# --- the small variants are the same architectures ----------------------------------------------

# What makes a family a family: tower kinds, pooling, masks, activations, tokenizer, objective.
_DEFINING = {"custom_text", "quick_gelu", "init_logit_bias"}
_DEFINING_VISION = {"timm_pool", "timm_proj"}
_DEFINING_TEXT = {"no_causal_mask", "pool_type", "proj_bias", "act_kwargs", "hf_tokenizer_name", "tokenizer_kwargs",
                  "context_length"}


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_each_small_variant_is_its_familys_architecture(family):
    full, tiny = open_clip.get_model_config(family.full), open_clip.get_model_config(family.tiny)
    assert {k: full.get(k) for k in _DEFINING} == {k: tiny.get(k) for k in _DEFINING}
    assert {k: full["vision_cfg"].get(k) for k in _DEFINING_VISION} == \
        {k: tiny["vision_cfg"].get(k) for k in _DEFINING_VISION}
    assert ("timm_model_name" in full["vision_cfg"]) == ("timm_model_name" in tiny["vision_cfg"])
    assert isinstance(full["vision_cfg"].get("layers"), list) == isinstance(tiny["vision_cfg"].get("layers"), list)
    assert {k: full["text_cfg"].get(k) for k in _DEFINING_TEXT} == {k: tiny["text_cfg"].get(k) for k in _DEFINING_TEXT}


# --- the model's own arithmetic --------------------------------------------------------------------

def test_vectors_are_open_clips(loaded):
    photos = _photos()
    texts, images = _reference_vectors(loaded, TEXTS, photos)
    np.testing.assert_allclose(loaded.embedder.embed_texts(TEXTS), texts, atol=1e-5)
    np.testing.assert_allclose(loaded.embedder.embed_images(photos), images, atol=1e-5)
    assert loaded.embedder.dimensions == texts.shape[1] == images.shape[1]
    assert loaded.embedder.scores == loaded.family.scores
    if loaded.family.tokenizer:  # SigLIP's tokens: padded to the full 64, as the tower pools the last position
        assert loaded.embedder.tokenize(["a cat"]).shape == (1, 64)


@pytest.fixture
def family_app(loaded):
    return create_app({"TESTING": True, "jpeg_draft": False, "precision": "fp32"}, embedder=loaded.embedder)


def test_classify_scores_follow_the_familys_objective(loaded, family_app):
    paths = [p for p in sorted(FIXTURES.iterdir()) if p.suffix in (".jpg", ".png")]
    response = family_app.test_client().post("/classify", json={
        "inputs": [_data_uri(p) for p in paths],
        "parameters": {"candidate_labels": LABELS, "hypothesis_template": TEMPLATE}})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    labels, images = _reference_vectors(loaded, [TEMPLATE.replace("{}", label) for label in LABELS], _photos())
    expected = _expected_scores(loaded, images @ labels.T)
    for row, answer in zip(expected, body["results"]):
        got = {entry["label"]: entry["score"] for entry in answer}
        np.testing.assert_allclose([got[label] for label in LABELS], row, atol=1e-5)
        assert [entry["label"] for entry in answer] == [LABELS[i] for i in np.argsort(-row, kind="stable")]
    sums = expected.sum(axis=1)
    if loaded.family.scores == "softmax":
        np.testing.assert_allclose(sums, 1, atol=1e-6)
    else:  # independent sigmoids: nothing makes them sum to 1
        assert not np.allclose(sums, 1, atol=1e-3)
    assert body["scores"] == loaded.family.scores


def test_rank_probabilities_follow_the_familys_objective(loaded, family_app):
    paths = [p for p in sorted(FIXTURES.iterdir()) if p.suffix in (".jpg", ".png")]
    client = family_app.test_client()
    response = client.post("/rank", json={"query": "a photo of a cat", "documents": [_data_uri(p) for p in paths],
                                          "scores": "probability"})
    assert response.status_code == 200, response.get_json()
    query, images = _reference_vectors(loaded, ["a photo of a cat"], _photos())
    expected = _expected_scores(loaded, (images @ query.T)[:, 0])
    got = {r["index"]: r["relevance_score"] for r in response.get_json()["results"]}
    np.testing.assert_allclose([got[i] for i in range(len(paths))], expected, atol=1e-5)
    other = "softmax" if loaded.family.scores == "sigmoid" else "sigmoid"
    wrong = client.post("/rank", json={"query": "a cat", "documents": [_data_uri(paths[0])], "scores": other})
    assert wrong.status_code == 422 and "scores" in wrong.get_json()["errors"]
    named = client.post("/rank", json={"query": "a cat", "documents": [_data_uri(paths[0])],
                                       "scores": loaded.family.scores})
    assert named.status_code == 200


def test_fast_paths_apply_or_say_in_one_line_why_not(loaded, caplog):
    family = loaded.family
    with caplog.at_level("INFO", logger="clip_service.model.embedder"):
        ClipEmbedder(loaded.embedder.model, loaded.embedder.preprocess, loaded.embedder.tokenizer,
                     model_name=family.tiny, pretrained="x")
    off = [r.getMessage() for r in caplog.records if "text trimming" in r.getMessage()]
    if open_clip.get_model_config(family.tiny).get("custom_text"):
        assert len(off) == 1 and "no causal mask" in off[0], off
    else:
        assert off == []
    # oneDNN prepacking reached the text tower wherever it is open_clip's own blocks (also CustomTextCLIP's).
    assert loaded.embedder.prepacked_blocks >= open_clip.get_model_config(family.tiny)["text_cfg"]["layers"]


def test_model_info_names_the_scores(loaded, family_app):
    client = family_app.test_client()
    models = client.get("/v1/models").get_json()["data"][0]
    text = client.post("/embed/text", json={"texts": ["a cat"]}).get_json()
    assert len(text["embeddings"][0]) == text["dimensions"] == loaded.embedder.dimensions
    assert models.get("dimensions") == loaded.embedder.dimensions
    assert models["scores"] == loaded.family.scores
    spec = client.get("/openapi.json").get_json()
    assert spec  # the document builds for every family's dimensions


# --- preparing MobileCLIP ---------------------------------------------------------------------------

def test_mobileclip2_is_reparameterised_same_vectors_and_faster(tmp_path):
    family = next(f for f in FAMILIES if f.full == "MobileCLIP2-S0")
    checkpoint = _write_checkpoint(family.tiny, tmp_path / "weights.pt")
    unfolded, _, preprocess = open_clip.create_model_and_transforms(family.tiny, pretrained=str(checkpoint))
    unfolded.eval()
    served = load_model(family.tiny, str(checkpoint), "cpu", prepack=False).model
    assert sum(1 for _ in served.modules()) < sum(1 for _ in unfolded.modules())
    pixels = torch.stack([preprocess(image) for image in _photos()] * 3)

    def best(model):
        # CPU seconds of this process on one thread: what other jobs on the machine hardly change
        # (wall time under a load average of 7 swung by 2x between runs). Folded: ~1.45x less here.
        times = []
        with torch.inference_mode():
            model.encode_image(pixels[:1])
            for _ in range(3):
                started = time.process_time()
                vectors = model.encode_image(pixels, normalize=True)
                times.append(time.process_time() - started)
        return min(times), vectors

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        unfolded_time, reference = best(unfolded)
        folded_time, folded = best(served)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(folded, reference, atol=1e-4, rtol=0)
    assert folded_time < 0.9 * unfolded_time, (folded_time, unfolded_time)


# --- preprocessing and tokenizers ---------------------------------------------------------------------

@pytest.mark.parametrize("model_name, expected", [
    ("ViT-B-16-SigLIP2", {"mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bicubic", "resize_mode": "squash"}),
    ("ViT-B-16-SigLIP", {"mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bicubic", "resize_mode": "squash"}),
    ("MobileCLIP2-S0", {"mean": (0.0,) * 3, "std": (1.0,) * 3, "interpolation": "bilinear", "resize_mode": "shortest"}),
    ("ViT-L-14", {}),  # its tags disagree (laion2b's mean and std are 0.5): open_clip's defaults
])
def test_a_checkpoint_file_gets_the_preprocessing_its_architectures_tags_share(model_name, expected):
    assert families.tagless_preprocessing(model_name)[0] == expected


@pytest.mark.parametrize("kind", ["t5", "gemma"])
def test_the_tokenizers_package_gives_open_clips_hf_tokenizer_ids(kind, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not a dependency; 5.25 passed")
    from open_clip.tokenizer import HFTokenizer

    directory = write_hub_tokenizer(tmp_path, kind)
    texts = TEXTS + ["x" * 300, "  Two   DOGS_playing\twith a ball ", "a photo of a {}.", "Ünïcödé"]
    for clean in ("canonicalize", "whitespace"):
        theirs = HFTokenizer(str(directory), context_length=64, clean=clean)
        assert torch.equal(HubTokenizer(directory, context_length=64, clean=clean)(texts), theirs(texts)), \
            (kind, clean, transformers.__version__)


def test_siglip_models_get_their_hugging_face_tokenizer(tmp_path):
    from clip_service.model import tokenizer as tokenizer_module

    directory = write_hub_tokenizer(tmp_path, "t5")
    ours = tokenizer_module.for_model("ViT-B-16-SigLIP", directory=str(directory))
    assert isinstance(ours, HubTokenizer) and ours.context_length == 64
    ids = ours(["a photo of a cat"])
    assert ids.shape == (1, 64) and ids[0, -1] == ours.pad_token_id  # padded to the full context


def _start(env: dict[str, str]) -> subprocess.CompletedProcess:
    code = "from clip_service.startup import app_or_exit; app_or_exit()"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**_base_env(), **env})


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("CLIP_")} | {"HF_HUB_OFFLINE": "1"}


def test_a_siglip_model_without_its_tokenizer_stops_in_one_line_with_exit_3(tmp_path):
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"not read: the tokenizer is found first")
    result = _start({"CLIP_MODEL": "ViT-B-16-SigLIP2", "CLIP_PRETRAINED": str(weights)})
    assert result.returncode == 3, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert "timm/ViT-B-16-SigLIP2" in last and "CLIP_TOKENIZER" in last and "transformers" not in last
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _start({"CLIP_MODEL": "ViT-B-16-SigLIP2", "CLIP_PRETRAINED": str(weights), "CLIP_TOKENIZER": str(empty)})
    assert result.returncode == 3 and f"CLIP_TOKENIZER={empty}" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("model_name, what", [("coca_ViT-B-32", "CoCa"),
                                               ("xlm-roberta-base-ViT-B-32", "Hugging Face model")])
def test_an_unsupported_family_is_refused_at_start_in_one_line(model_name, what, tmp_path):
    with pytest.raises(UnsupportedModelError, match=what):
        load_model(model_name, "any", "cpu")
    result = _start({"CLIP_MODEL": model_name, "CLIP_PRETRAINED": str(tmp_path / "none.pt")})
    assert result.returncode == 78, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert what in last and "SigLIP" in last and "MobileCLIP2" in last and "Traceback" not in result.stderr


def test_a_model_without_an_image_tower_is_refused():
    config = dict(open_clip.get_model_config("ViT-B-32"), vision_cfg={})
    assert "without an image tower" in families.refusal("text-only", config)


# --- the converter -----------------------------------------------------------------------------------

def test_the_converter_writes_each_family_and_its_tokenizer(loaded, tmp_path):
    from clip_service.model.convert import convert

    family = loaded.family
    dest = tmp_path / "weights.safetensors"
    summary = convert(family.tiny, str(loaded.checkpoint), str(dest), tokenizer_dir=str(tmp_path / "tokenizer"),
                      tokenizer_source=loaded.tokenizer_dir)
    assert "bitwise" in summary
    assert (tmp_path / "tokenizer" / "tokenizer.json").is_file() == bool(family.tokenizer)
    served = ClipEmbedder.load(family.tiny, str(dest), "cpu", precision="fp32",
                               tokenizer_dir=str(tmp_path / "tokenizer") if family.tokenizer else "")
    np.testing.assert_allclose(served.embed_texts(TEXTS), loaded.embedder.embed_texts(TEXTS), atol=1e-6)
    np.testing.assert_allclose(served.embed_images(_photos()), loaded.embedder.embed_images(_photos()), atol=1e-6)


# --- a real Gunicorn, every route --------------------------------------------------------------------

def _local_dir(family: Family, checkpoint: Path, folder: Path, tokenizer_dir: str) -> str:
    """The small variant as an open_clip ``local-dir:`` a fresh process can load (config, weights, tokenizer)."""
    config = json.loads((TESTS / "model_configs" / f"{family.tiny}.json").read_text())
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": {}}))
    shutil.copy(checkpoint, folder / "open_clip_pytorch_model.bin")
    return f"local-dir:{folder}"


@pytest.mark.e2e
def test_gunicorn_serves_every_route_for_the_family(loaded, tmp_path):
    family = loaded.family
    spec = _local_dir(family, loaded.checkpoint, tmp_path, loaded.tokenizer_dir)
    env = {"CLIP_MODEL": spec, "CLIP_PRETRAINED": str(tmp_path / "open_clip_pytorch_model.bin"),
           "CLIP_PRECISION": "fp32", "CLIP_WEAVIATE": "true", "CLIP_JPEG_DRAFT": "false", "CLIP_WORKERS": "1"}
    if loaded.tokenizer_dir:
        env["CLIP_TOKENIZER"] = loaded.tokenizer_dir
    server = GunicornProcess(env, tmp_path / "gunicorn.log")
    try:
        server.wait_healthy(timeout=180, path="/health/ready")
        base = server.base
        paths = [p for p in sorted(FIXTURES.iterdir()) if p.suffix in (".jpg", ".png")]
        uris = [_data_uri(p) for p in paths]
        texts, images = _reference_vectors(loaded, TEXTS[:3], _photos())
        dims = texts.shape[1]

        body = requests.post(base + "/embed/text", json={"texts": TEXTS[:3]}, timeout=60).json()
        np.testing.assert_allclose(body["embeddings"], texts, atol=1e-5)
        assert body["dimensions"] == dims
        body = requests.post(base + "/embed/image", json={"urls": uris}, timeout=60).json()
        np.testing.assert_allclose(body["embeddings"], images, atol=1e-5)
        body = requests.post(base + "/embed/mixed", json={"texts": TEXTS[:1], "urls": uris[:1]}, timeout=60).json()
        assert len(body["text_embeddings"][0]) == len(body["image_embeddings"][0]) == dims
        body = requests.post(base + "/v1/embeddings", json={"input": TEXTS[:3], "model": spec}, timeout=60).json()
        np.testing.assert_allclose([d["embedding"] for d in body["data"]], texts, atol=1e-5)
        model = requests.get(base + "/v1/models", timeout=30).json()["data"][0]
        assert model["scores"] == family.scores and model["dimensions"] == dims
        body = requests.post(base + "/classify", json={"inputs": uris, "parameters": {
            "candidate_labels": LABELS, "hypothesis_template": TEMPLATE}}, timeout=60).json()
        labels, _ = _reference_vectors(loaded, [TEMPLATE.replace("{}", label) for label in LABELS])
        expected = _expected_scores(loaded, images @ labels.T)
        for row, answer in zip(expected, body["results"]):
            got = {entry["label"]: entry["score"] for entry in answer}
            np.testing.assert_allclose([got[label] for label in LABELS], row, atol=1e-5)
        body = requests.post(base + "/rank", json={"query": "a cat", "documents": uris, "scores": "probability"},
                             timeout=60).json()
        assert len(body["results"]) == len(uris) and body["scores"] == family.scores
        body = requests.post(base + "/vectorize", json={"texts": TEXTS[:1], "images": [
            base64.b64encode(paths[0].read_bytes()).decode()]}, timeout=60).json()
        np.testing.assert_allclose(body["textVectors"][0], texts[0], atol=1e-5)
        np.testing.assert_allclose(body["imageVectors"][0], images[0], atol=1e-5)
        meta = requests.get(base + "/meta", timeout=30).json()
        assert meta["dimensions"] == dims and meta["scores"] == family.scores
        spec_doc = requests.get(base + "/openapi.json", timeout=30)
        assert spec_doc.status_code == 200
        # The cache: the same text again is served from it, the same vector.
        again = requests.post(base + "/embed/text", json={"texts": TEXTS[:1]}, timeout=60).json()
        np.testing.assert_allclose(again["embeddings"][0], texts[0], atol=1e-5)
        # The bulk command through this service: a Parquet column of the model's length.
        _bulk_through(base, paths, dims, tmp_path)
    finally:
        server.stop()


def _bulk_through(base: str, paths: list[Path], dims: int, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    folder = tmp_path / "photos"
    folder.mkdir()
    for p in paths:
        shutil.copy(p, folder / p.name)
    out = tmp_path / "out.parquet"
    result = subprocess.run([sys.executable, "-m", "clip_service.cli", "embed", str(folder), "-o", str(out),
                             "--url", base], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    table = pq.read_table(out if out.is_file() else next(out.glob("*.parquet")))
    assert str(table.schema.field("vector").type) == f"fixed_size_list<element: float>[{dims}]"


# --- the full-size architectures ---------------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.parametrize("model_name, tokenizer_kind", [("ViT-B-16-SigLIP2", "gemma"), ("MobileCLIP2-S0", None)])
def test_the_full_size_family_gives_open_clips_vectors_and_scores(model_name, tokenizer_kind, tmp_path):
    checkpoint = _write_checkpoint(model_name, tmp_path / "weights.pt")
    tokenizer_dir = str(write_hub_tokenizer(tmp_path / "tokenizer", tokenizer_kind)) if tokenizer_kind else ""
    embedder = ClipEmbedder.load(model_name, str(checkpoint), "cpu", precision="fp32", tokenizer_dir=tokenizer_dir)
    preprocessing, _ = families.tagless_preprocessing(model_name)
    reference, _, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=str(checkpoint), image_mean=preprocessing["mean"], image_std=preprocessing["std"],
        image_interpolation=preprocessing["interpolation"], image_resize_mode=preprocessing["resize_mode"])
    reference.eval()
    families.prepare(reference)
    family = Family(model_name, model_name, tokenizer_kind, "sigmoid" if tokenizer_kind else "softmax")
    loaded = Loaded(family, checkpoint, tokenizer_dir, embedder, reference, preprocess,
                    HubTokenizer(tokenizer_dir, context_length=64, clean="canonicalize") if tokenizer_kind
                    else open_clip.get_tokenizer(model_name))
    photos = _photos()
    texts, images = _reference_vectors(loaded, TEXTS, photos)
    np.testing.assert_allclose(embedder.embed_texts(TEXTS), texts, atol=1e-5)
    np.testing.assert_allclose(embedder.embed_images(photos), images, atol=1e-5)
    assert embedder.dimensions == {"ViT-B-16-SigLIP2": 768, "MobileCLIP2-S0": 512}[model_name]
    assert embedder.input_size == {"ViT-B-16-SigLIP2": 224, "MobileCLIP2-S0": 256}[model_name]
    app = create_app({"TESTING": True, "jpeg_draft": False, "precision": "fp32"}, embedder=embedder)
    paths = [p for p in sorted(FIXTURES.iterdir()) if p.suffix in (".jpg", ".png")]
    body = app.test_client().post("/classify", json={"inputs": [_data_uri(p) for p in paths], "parameters": {
        "candidate_labels": LABELS, "hypothesis_template": TEMPLATE}}).get_json()
    labels, _ = _reference_vectors(loaded, [TEMPLATE.replace("{}", label) for label in LABELS])
    for row, answer in zip(_expected_scores(loaded, images @ labels.T), body["results"]):
        got = {entry["label"]: entry["score"] for entry in answer}
        np.testing.assert_allclose([got[label] for label in LABELS], row, atol=1e-5)


def test_an_hf_hub_model_out_of_reach_is_one_line_naming_local_dir(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="local-dir:") as refused:
        load_model("hf-hub:timm/ViT-B-16-SigLIP2", "unused", "cpu")
    assert "\n" not in str(refused.value)
