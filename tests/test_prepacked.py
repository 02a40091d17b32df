"""oneDNN-prepacked layers give open_clip's vectors, and step aside when they would not."""

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from clip_service.model import prepacked
from clip_service.model.embedder import ClipEmbedder

from .helpers import TINY_MODEL, reference_image_vectors, reference_text_vectors

pytestmark = pytest.mark.skipif(not prepacked.available(), reason="this torch build has no oneDNN")

TEXTS = ["a cat", "", "two dogs playing with a red ball in a park at sunset", "🚀"] * 3


def _random_images(count: int, size: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size + 7, 3), dtype=np.uint8)) for _ in range(count)]


def test_every_block_of_both_towers_is_prepacked(tiny_embedder):
    assert tiny_embedder.prepacked_blocks == 2  # the tiny config has one text and one image layer
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in tiny_embedder.model.modules())
    assert not any(type(m) is torch.nn.Linear for block in tiny_embedder.model.transformer.resblocks
                   for m in block.modules())
    assert type(tiny_embedder.model.visual.conv1) is prepacked.PrepackedPatchEmbedding


@pytest.mark.parametrize("size", [(64, 64), (70, 45), (32, 95)])
def test_the_prepacked_patch_embedding_is_the_convolution(size):
    """Any image size, the rows and columns a stride-k convolution skips included; several images at once."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 48, kernel_size=16, stride=16, bias=False).eval()
    x = torch.randn(3, 3, *size)
    with torch.inference_mode():
        expected, actual = conv(x), prepacked.PrepackedPatchEmbedding(conv)(x)
    assert actual.shape == expected.shape and (actual - expected).abs().max() <= 1e-5


def test_a_patch_embedding_whose_output_would_change_keeps_the_convolution(monkeypatch, tiny_checkpoint,
                                                                           reference_model):
    real_forward = prepacked.PrepackedPatchEmbedding.forward
    monkeypatch.setattr(prepacked.PrepackedPatchEmbedding, "forward", lambda self, x: real_forward(self, x) + 1e-2)
    embedder = ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu")
    assert type(embedder.model.visual.conv1) is torch.nn.Conv2d and embedder.prepacked_blocks == 2
    images = _random_images(2, 40)
    assert np.abs(embedder.embed_images(images) - reference_image_vectors(reference_model, images)).max() <= 1e-5


@pytest.mark.parametrize("count", [1, 3, 12])  # trimmed (one text, fewer than 4) and packed text paths
def test_prepacked_tiny_model_equals_open_clip(tiny_embedder, reference_model, count):
    texts = TEXTS[:count]
    assert np.abs(tiny_embedder.embed_texts(texts) - reference_text_vectors(reference_model, texts)).max() <= 1e-5
    images = _random_images(count, 40)
    assert np.abs(tiny_embedder.embed_images(images) - reference_image_vectors(reference_model, images)).max() <= 1e-5


@pytest.mark.e2e
def test_prepacked_vit_b32_equals_open_clip(vit_b32_checkpoint):
    """The real architecture, QuickGELU-free random weights named by config: 24 blocks, same vectors."""
    embedder = ClipEmbedder.load("ViT-B-32", str(vit_b32_checkpoint), "cpu")
    assert embedder.prepacked_blocks == 24
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=str(vit_b32_checkpoint))
    reference = (model.eval(), preprocess, open_clip.get_tokenizer("ViT-B-32"))
    assert np.abs(embedder.embed_texts(TEXTS) - reference_text_vectors(reference, TEXTS)).max() <= 1e-5
    images = _random_images(3, 240)
    assert np.abs(embedder.embed_images(images) - reference_image_vectors(reference, images)).max() <= 1e-5


@pytest.mark.e2e
def test_prepacked_quick_gelu_vit_b32_equals_open_clip(tmp_path):
    """laion400m_e32's architecture: QuickGELU, fused into the first MLP layer as a scaled swish."""
    torch.manual_seed(1)
    checkpoint = tmp_path / "vit-quickgelu.pt"
    torch.save(open_clip.create_model("ViT-B-32-quickgelu").state_dict(), checkpoint)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32-quickgelu", pretrained=str(checkpoint))
    reference = (model.eval(), preprocess, open_clip.get_tokenizer("ViT-B-32"))
    embedder = ClipEmbedder.load("ViT-B-32-quickgelu", str(checkpoint), "cpu")
    assert embedder.prepacked_blocks == 24
    fc = embedder.model.transformer.resblocks[0].mlp.c_fc
    assert (fc.activation, type(fc.fused).__name__) == ("swish", "QuickGELU")
    assert np.abs(embedder.embed_texts(TEXTS) - reference_text_vectors(reference, TEXTS)).max() <= 1e-5
    images = _random_images(3, 240)
    assert np.abs(embedder.embed_images(images) - reference_image_vectors(reference, images)).max() <= 1e-5


def test_a_block_whose_output_would_change_keeps_open_clips_layers(monkeypatch, tiny_checkpoint, reference_model):
    real_forward = prepacked.PrepackedLinear.forward
    monkeypatch.setattr(prepacked.PrepackedLinear, "forward", lambda self, x: real_forward(self, x) + 1e-2)
    embedder = ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu")
    assert embedder.prepacked_blocks == 0
    assert sum(isinstance(m, torch.nn.MultiheadAttention) for m in embedder.model.modules()) == 2
    assert np.abs(embedder.embed_texts(TEXTS) - reference_text_vectors(reference_model, TEXTS)).max() <= 1e-5


@pytest.mark.e2e
def test_a_tower_whose_first_block_would_change_keeps_open_clips_layers_in_every_block(monkeypatch, vit_b32_checkpoint):
    """Only the text tower's attention (the one with a causal mask) is made wrong: its 12 blocks keep open_clip's
    layers, the image tower's 12 are prepacked."""
    real_forward = prepacked.PrepackedSelfAttention.forward

    def wrong_with_a_mask(self, query, key, value, need_weights=False, attn_mask=None):
        out, weights = real_forward(self, query, key, value, need_weights, attn_mask)
        return (out + 1e-2 if attn_mask is not None else out), weights

    monkeypatch.setattr(prepacked.PrepackedSelfAttention, "forward", wrong_with_a_mask)
    embedder = ClipEmbedder.load("ViT-B-32", str(vit_b32_checkpoint), "cpu")
    assert embedder.prepacked_blocks == 12
    text_blocks, image_blocks = embedder.model.transformer.resblocks, embedder.model.visual.transformer.resblocks
    assert all(type(b.attn) is torch.nn.MultiheadAttention for b in text_blocks)
    assert all(type(b.attn) is prepacked.PrepackedSelfAttention for b in image_blocks)


def test_prepacking_can_be_switched_off_through_the_environment(monkeypatch, tiny_checkpoint):
    from clip_service import create_app

    monkeypatch.setenv("CLIP_MODEL", TINY_MODEL)
    monkeypatch.setenv("CLIP_PRETRAINED", str(tiny_checkpoint))
    monkeypatch.setenv("CLIP_DEVICE", "cpu")
    monkeypatch.setenv("CLIP_ONEDNN_PREPACK", "false")
    assert create_app({"TESTING": True}).extensions["clip_embedder"].prepacked_blocks == 0
    monkeypatch.setenv("CLIP_ONEDNN_PREPACK", "true")
    assert create_app({"TESTING": True}).extensions["clip_embedder"].prepacked_blocks == 2


def _masks(batch: int, heads: int, length: int) -> dict:
    causal = torch.full((length, length), float("-inf")).triu_(1)
    per_head = torch.randn(batch * heads, length, length)
    return {"none": None, "float causal": causal, "bool causal": causal.isinf(), "float per head": per_head}


@pytest.mark.parametrize("kind", ["none", "float causal", "bool causal", "float per head"])
def test_prepacked_attention_takes_the_masks_multihead_attention_takes(kind):
    torch.manual_seed(0)
    attention = torch.nn.MultiheadAttention(64, 4, batch_first=True).eval()
    x = torch.randn(3, 9, 64)
    mask = _masks(3, 4, 9)[kind]
    with torch.inference_mode():
        expected = attention(x, x, x, need_weights=False, attn_mask=mask)[0]
        actual = prepacked.PrepackedSelfAttention(attention)(x, x, x, need_weights=False, attn_mask=mask)[0]
    assert (actual - expected).abs().max().item() <= 1e-5


def test_prepacked_attention_refuses_cross_attention():
    attention = prepacked.PrepackedSelfAttention(torch.nn.MultiheadAttention(64, 4, batch_first=True).eval())
    x, y = torch.randn(1, 5, 64), torch.randn(1, 5, 64)
    with pytest.raises(ValueError):
        attention(x, y, y)
