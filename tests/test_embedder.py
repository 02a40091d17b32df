"""The embedder gives exactly open_clip's vectors and refuses to run without its weights."""

import numpy as np
import open_clip
import pytest
import torch

from clip_service.images.decoding import decode_image
from clip_service.model.embedder import ClipEmbedder
from clip_service.model.errors import ModelLoadError
from clip_service.model.tags import needs_quick_gelu

from .helpers import TINY_MODEL, as_image, reference_image_vectors, reference_text_vectors

TEXTS = ["a photo of a cat", "a cup of coffee", "", "🚀 rocket launch at night"]


def test_text_vectors_equal_open_clip(tiny_embedder, reference_model):
    ours = tiny_embedder.embed_texts(TEXTS)
    theirs = reference_text_vectors(reference_model, TEXTS)
    assert ours.shape == (len(TEXTS), 32) and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() <= 1e-5
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_image_vectors_equal_open_clip_for_the_same_bytes(tiny_embedder, reference_model, photos):
    decoded = [decode_image(data, max_pixels=10**8) for data in photos.values()]
    ours = tiny_embedder.embed_images(decoded)
    theirs = reference_image_vectors(
        reference_model, [as_image(data) for data in photos.values()])
    assert np.abs(ours - theirs).max() <= 1e-5
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_batches_larger_than_max_batch_are_split_without_changing_results(tiny_checkpoint):
    small = ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu", max_batch=3)
    big = ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu", max_batch=64)
    texts = [f"text number {i}" for i in range(8)]
    assert np.abs(small.embed_texts(texts) - big.embed_texts(texts)).max() <= 1e-6


def test_model_is_in_eval_mode_without_autograd(tiny_embedder):
    assert not any(module.training for module in tiny_embedder.model.modules())
    assert not any(p.requires_grad for p in tiny_embedder.model.parameters())


@pytest.mark.e2e
def test_default_pretrained_tag_is_built_with_quick_gelu(monkeypatch, tmp_path):
    """laion400m_e32 was trained with QuickGELU; plain ViT-B-32 would silently use GELU."""
    assert needs_quick_gelu("ViT-B-32", "laion400m_e32")
    assert not needs_quick_gelu("ViT-B-32", "laion2b_s34b_b79k")
    # Load through the real tag path; only the download is replaced by a local file.
    torch.manual_seed(0)
    checkpoint = tmp_path / "vit.pt"
    torch.save(open_clip.create_model("ViT-B-32-quickgelu").state_dict(), checkpoint)
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda cfg, cache_dir=None: str(checkpoint))
    embedder = ClipEmbedder.load("ViT-B-32", "laion400m_e32", "cpu")
    activations = {type(m).__name__ for m in embedder.model.modules()}
    assert "QuickGELU" in activations and "GELU" not in activations
    assert embedder.dimensions == 512


def test_missing_checkpoint_file_is_refused_with_a_helpful_message():
    with pytest.raises(ModelLoadError) as err:
        ClipEmbedder.load(TINY_MODEL, "/no/such/checkpoint.pt", "cpu")
    message = str(err.value)
    assert TINY_MODEL in message and "/no/such/checkpoint.pt" in message and "CLIP_PRETRAINED" in message


def test_corrupt_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelLoadError, match="corrupt.pt"):
        ClipEmbedder.load(TINY_MODEL, str(bad), "cpu")


def test_checkpoint_of_another_architecture_is_refused(tiny_checkpoint):
    with pytest.raises(ModelLoadError, match="ViT-B-32"):
        ClipEmbedder.load("ViT-B-32", str(tiny_checkpoint), "cpu")


def test_unreachable_hub_is_refused_not_replaced_by_random_weights(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    # The hub's own retries take a minute here; fail the download at once instead.
    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    with pytest.raises(ModelLoadError) as err:
        ClipEmbedder.load("ViT-B-32", "laion400m_e32", "cpu")
    message = str(err.value)
    assert "ViT-B-32" in message and "laion400m_e32" in message and "CLIP_PRETRAINED=" in message


@pytest.mark.e2e
def test_real_vit_b32_loaded_from_a_local_checkpoint_via_the_environment(monkeypatch, vit_b32_checkpoint):
    """The real architecture through CLIP_PRETRAINED=<path>: 512-d vectors equal to open_clip's."""
    from clip_service import create_app

    monkeypatch.setenv("CLIP_MODEL", "ViT-B-32")
    monkeypatch.setenv("CLIP_PRETRAINED", str(vit_b32_checkpoint))
    monkeypatch.setenv("CLIP_DEVICE", "cpu")
    monkeypatch.setenv("CLIP_PRECISION", "fp32")  # open_clip's vectors to 1e-5 (auto runs bf16 where it can)
    app = create_app({"TESTING": True})
    texts = ["a diagram", "a dog"]
    body = app.test_client().post("/embed/text", json={"texts": texts}).get_json()
    assert body["dimensions"] == 512 and body["pretrained"] == vit_b32_checkpoint.name

    model, _, _ = open_clip.create_model_and_transforms("ViT-B-32", pretrained=str(vit_b32_checkpoint))
    with torch.no_grad():
        expected = model.eval().encode_text(open_clip.get_tokenizer("ViT-B-32")(texts), normalize=True).numpy()
    assert np.abs(np.asarray(body["embeddings"]) - expected).max() <= 1e-5


@pytest.mark.parametrize("texts", [
    ["a cat"],
    ["a cat", "a much longer description of a small grey cat sitting on a red sofa in the sun"],
    ["word " * 200],  # longer than the context: truncated, nothing to trim
    [""],
])
def test_trimmed_text_encoding_equals_open_clip_full_length(tiny_embedder, reference_model, texts):
    from clip_service.model.text_encoding import supports_text_trimming

    assert supports_text_trimming(tiny_embedder.model)
    assert np.abs(tiny_embedder.embed_texts(texts) - reference_text_vectors(reference_model, texts)).max() <= 1e-5


@pytest.mark.e2e
def test_trimmed_text_encoding_on_the_real_architecture(vit_b32_checkpoint):
    from clip_service.model.text_encoding import encode_text_trimmed

    model = open_clip.create_model("ViT-B-32", pretrained=str(vit_b32_checkpoint)).eval()
    tokens = open_clip.get_tokenizer("ViT-B-32")(["a dog", "two dogs playing with a ball in a park at sunset"] * 4)
    with torch.no_grad():
        full = model.encode_text(tokens, normalize=True)
        trimmed = encode_text_trimmed(model, tokens)
    assert (full - trimmed).abs().max().item() <= 1e-5


@pytest.mark.parametrize("texts", [
    ["a", "bb cc", "a much longer text about a cat on a mat in the sun", ""],
    [f"text {i} " + "word " * (i * 3 % 17) for i in range(24)],
    ["word " * 200, "short", "a medium length text here", "x", "y z"],  # one truncated to 77 tokens
])
def test_packed_text_encoding_equals_open_clip_full_length(tiny_embedder, reference_model, texts):
    from clip_service.model.text_encoding import encode_text_packed, supports_text_packing

    assert supports_text_packing(tiny_embedder.model)
    tokens = tiny_embedder.tokenizer(texts)
    with torch.no_grad():
        packed = encode_text_packed(tiny_embedder.model, tokens).numpy()
    assert np.abs(packed - reference_text_vectors(reference_model, texts)).max() <= 1e-5


@pytest.mark.e2e
def test_packed_text_encoding_on_the_real_architecture(vit_b32_checkpoint):
    from clip_service.model.text_encoding import encode_text_packed

    model = open_clip.create_model("ViT-B-32", pretrained=str(vit_b32_checkpoint)).eval()
    texts = [("a photo of " + "a very " * (i % 9) + "big dog").strip() for i in range(20)]
    tokens = open_clip.get_tokenizer("ViT-B-32")(texts)
    with torch.no_grad():
        full = model.encode_text(tokens, normalize=True)
        packed = encode_text_packed(model, tokens)
    assert (full - packed).abs().max().item() <= 1e-5
