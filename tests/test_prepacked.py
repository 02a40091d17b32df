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
needs_bf16 = pytest.mark.skipif(not prepacked.bf16_native(), reason="this CPU has no native bfloat16 products")

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
    embedder = ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu", precision="fp32")
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
    embedder = ClipEmbedder.load("ViT-B-32", str(vit_b32_checkpoint), "cpu", precision="fp32")
    assert embedder.prepacked_blocks == 24
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=str(vit_b32_checkpoint))
    reference = (model.eval(), preprocess, open_clip.get_tokenizer("ViT-B-32"))
    assert np.abs(embedder.embed_texts(TEXTS) - reference_text_vectors(reference, TEXTS)).max() <= 1e-5
    images = _random_images(3, 240)
    assert np.abs(embedder.embed_images(images) - reference_image_vectors(reference, images)).max() <= 1e-5


@pytest.fixture(scope="module")
def quick_gelu_vit_b32(tmp_path_factory):
    """laion400m_e32's architecture with fixed-seed random weights: (checkpoint, open_clip's model on it)."""
    torch.manual_seed(1)
    checkpoint = tmp_path_factory.mktemp("quickgelu") / "vit-quickgelu.pt"
    torch.save(open_clip.create_model("ViT-B-32-quickgelu").state_dict(), checkpoint)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32-quickgelu", pretrained=str(checkpoint))
    return checkpoint, (model.eval(), preprocess, open_clip.get_tokenizer("ViT-B-32"))


@pytest.mark.e2e
def test_prepacked_quick_gelu_vit_b32_equals_open_clip(quick_gelu_vit_b32):
    """laion400m_e32's architecture: QuickGELU, fused into the first MLP layer as a scaled swish."""
    checkpoint, reference = quick_gelu_vit_b32
    embedder = ClipEmbedder.load("ViT-B-32-quickgelu", str(checkpoint), "cpu", precision="fp32")
    assert embedder.prepacked_blocks == 24
    fc = embedder.model.transformer.resblocks[0].mlp.c_fc
    assert (fc.activation, type(fc.fused).__name__) == ("swish", "QuickGELU")
    assert np.abs(embedder.embed_texts(TEXTS) - reference_text_vectors(reference, TEXTS)).max() <= 1e-5
    images = _random_images(3, 240)
    assert np.abs(embedder.embed_images(images) - reference_image_vectors(reference, images)).max() <= 1e-5


def test_a_block_whose_output_would_change_keeps_open_clips_layers(monkeypatch, tiny_checkpoint, reference_model):
    real_forward = prepacked.PrepackedLinear.forward
    monkeypatch.setattr(prepacked.PrepackedLinear, "forward", lambda self, x: real_forward(self, x) + 1e-2)
    embedder = ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu", precision="fp32")
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


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=needs_bf16)])
@pytest.mark.parametrize("kind", ["none", "float causal", "bool causal", "float per head"])
def test_prepacked_attention_takes_the_masks_multihead_attention_takes(kind, dtype):
    torch.manual_seed(0)
    attention = torch.nn.MultiheadAttention(64, 4, batch_first=True).eval()
    x = torch.randn(3, 9, 64)
    mask = _masks(3, 4, 9)[kind]
    with torch.inference_mode():
        expected = attention(x, x, x, need_weights=False, attn_mask=mask)[0]
        actual = prepacked.PrepackedSelfAttention(attention, dtype)(x, x, x, need_weights=False, attn_mask=mask)[0]
    assert actual.dtype == torch.float32  # bf16 products, the stream's dtype out
    if dtype == torch.float32:
        assert (actual - expected).abs().max().item() <= 1e-5
    else:  # bf16 rounding: ~0.5% of the output's size
        assert torch.linalg.vector_norm(actual - expected) <= 2e-2 * torch.linalg.vector_norm(expected)


def test_prepacked_attention_refuses_cross_attention():
    attention = prepacked.PrepackedSelfAttention(torch.nn.MultiheadAttention(64, 4, batch_first=True).eval())
    x, y = torch.randn(1, 5, 64), torch.randn(1, 5, 64)
    with pytest.raises(ValueError):
        attention(x, y, y)


# --- bf16 (CLIP_PRECISION=bf16) ------------------------------------------------------------

def _cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def bf16_tiny_embedder(tiny_checkpoint):
    return ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu", precision="bf16")


@needs_bf16
@pytest.mark.parametrize("count", [1, 3, 12])  # trimmed and packed text paths
def test_bf16_tiny_model_stays_within_rounding_of_open_clip(bf16_tiny_embedder, reference_model, count):
    embedder = bf16_tiny_embedder
    assert embedder.precision == "bf16" and embedder.prepacked_blocks == 2
    assert embedder.model.visual.conv1.linear.packed_weight.dtype == torch.bfloat16
    # The residual stream stays fp32: open_clip reads the blocks' weight dtype to choose it.
    assert embedder.model.transformer.get_cast_dtype() == torch.float32
    texts, images = TEXTS[:count], _random_images(count, 40)
    for mine, theirs in ((embedder.embed_texts(texts), reference_text_vectors(reference_model, texts)),
                         (embedder.embed_images(images), reference_image_vectors(reference_model, images))):
        assert mine.dtype == np.float32 and np.allclose(np.linalg.norm(mine, axis=1), 1, atol=1e-5)
        assert _cosines(mine, theirs).min() >= 0.999
        assert np.abs(mine - theirs).max() > 1e-6  # bf16 did run: fp32 agrees to 1e-7


@needs_bf16
@pytest.mark.e2e
def test_bf16_quick_gelu_vit_b32_stays_within_cosine_0_9999_of_open_clip(quick_gelu_vit_b32):
    """laion400m_e32's architecture in bf16: 24 blocks, QuickGELU fused, vectors within 1e-4 of fp32's cosine."""
    checkpoint, reference = quick_gelu_vit_b32
    embedder = ClipEmbedder.load("ViT-B-32-quickgelu", str(checkpoint), "cpu", precision="bf16")
    assert embedder.prepacked_blocks == 24 and embedder.precision == "bf16"
    assert embedder.model.transformer.resblocks[0].mlp.c_fc.activation == "swish"
    assert _cosines(embedder.embed_texts(TEXTS), reference_text_vectors(reference, TEXTS)).min() >= 0.9999
    images = _random_images(3, 240)
    assert _cosines(embedder.embed_images(images), reference_image_vectors(reference, images)).min() >= 0.9999


def test_bf16_on_a_cpu_without_it_runs_fp32_and_says_so(monkeypatch, tiny_checkpoint, reference_model, caplog):
    monkeypatch.setattr(prepacked, "bf16_native", lambda: False)
    embedder = ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu", precision="bf16")
    assert embedder.precision == "fp32" and embedder.prepacked_blocks == 2
    assert "no native bfloat16" in caplog.text
    assert np.abs(embedder.embed_texts(TEXTS) - reference_text_vectors(reference_model, TEXTS)).max() <= 1e-5


@needs_bf16
def test_a_bf16_block_with_a_wrong_activation_keeps_open_clips_layers(monkeypatch, tiny_checkpoint, reference_model):
    """The bf16 check allows rounding, not a wrong computation: swish in place of GELU fails it."""
    real_init = prepacked.PrepackedLinear.__init__

    def swish_for_gelu(self, weight, bias, activation=("none", ""), *args, **kwargs):
        real_init(self, weight, bias, ("swish", "") if activation[0] == "gelu" else activation, *args, **kwargs)

    monkeypatch.setattr(prepacked.PrepackedLinear, "__init__", swish_for_gelu)
    embedder = ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu", precision="bf16")
    assert embedder.prepacked_blocks == 0
    assert np.abs(embedder.embed_texts(TEXTS) - reference_text_vectors(reference_model, TEXTS)).max() <= 1e-5


def test_the_bf16_check_measures_what_a_block_adds_not_its_residual():
    """A block's output is mostly its input: 5% off in what it adds must fail however large that input is."""
    torch.manual_seed(0)
    residual, added = 100 * torch.randn(4, 64), torch.randn(4, 64)
    expected = residual + added
    assert prepacked._agrees(residual + added * (1 + 1e-3), expected, residual, torch.bfloat16)
    assert not prepacked._agrees(residual + added * 1.05, expected, residual, torch.bfloat16)
    assert not prepacked._agrees(residual + added * 1.05, expected, residual, torch.float32)


def test_precision_is_set_through_the_environment(monkeypatch, tiny_checkpoint):
    from clip_service import create_app

    monkeypatch.setenv("CLIP_MODEL", TINY_MODEL)
    monkeypatch.setenv("CLIP_PRETRAINED", str(tiny_checkpoint))
    monkeypatch.setenv("CLIP_DEVICE", "cpu")
    monkeypatch.setenv("CLIP_PRECISION", "bf16")
    embedder = create_app({"TESTING": True}).extensions["clip_embedder"]
    assert embedder.precision == ("bf16" if prepacked.bf16_native() else "fp32")
    monkeypatch.setenv("CLIP_PRECISION", "fp32")
    assert create_app({"TESTING": True}).extensions["clip_embedder"].precision == "fp32"


@pytest.mark.parametrize("native", [pytest.param(True, marks=needs_bf16), False])
def test_auto_precision_is_bf16_exactly_where_the_cpu_has_it(monkeypatch, tiny_checkpoint, caplog, native):
    monkeypatch.setattr(prepacked, "bf16_native", lambda: native)
    assert ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu", precision="auto").precision == \
        ("bf16" if native else "fp32")
    assert ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu", precision="auto",
                             prepack=False).precision == "fp32"
    assert "CLIP_PRECISION" not in caplog.text and "no native bfloat16" not in caplog.text
