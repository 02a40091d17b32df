"""oneDNN-prepacked fp32 matrix products for open_clip's transformer blocks (CPU only).

open_clip's layers multiply through torch's default CPU GEMM (MKL), which on
the AMD EPYC machines we measured reaches ~35-90 GFLOP/s per core depending
on the row count; oneDNN with each weight reordered once, at load, into its
blocked layout reaches ~100 at every row count (see BENCHMARKS.md). It is
the same fp32 arithmetic: vectors agree with open_clip's to ~1e-7.

On a CPU with native bfloat16 products (AVX512-BF16 or AMX), ``dtype=bfloat16``
packs the weights in bf16 and rounds each product's input to it (oneDNN adds
up in fp32): ~1.7x the fp32 speed of a ViT-B-32 image pass on the AMD EPYC
machines here. The residual stream, the layer norms, the softmax's sums and
the final projection stay fp32, so vectors stay within ~1e-3 of fp32's
(cosine > 0.9999 on the benchmark's photos and texts, BENCHMARKS.md); the
service uses it only when asked (``CLIP_PRECISION=bf16``).

The two ops are the ones torch's own compiler (inductor) emits when it
freezes a CPU model; they are private, so private_apis.py checks they are
there (without them nothing is swapped), and each tower's first block is
compared with open_clip's own before the tower is swapped.
"""

from __future__ import annotations

import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from . import private_apis

log = logging.getLogger(__name__)

# A swapped block must reproduce open_clip's block this closely on a random input.
_TOLERANCE = 1e-4
# In bf16, what the block adds to its input (attention plus MLP) may differ from fp32's by this
# fraction of its size: rounding to bf16 costs ~0.5%; a wrong activation or scale costs several percent.
_BF16_TOLERANCE = 2e-2


def available() -> bool:
    """Whether this torch build has oneDNN and the two ops used here."""
    return (private_apis.reorder_linear_weight is not None and private_apis.linear_pointwise is not None
            and torch.backends.mkldnn.is_available())


def bf16_native() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (without it, oneDNN emulates bf16 slower than fp32)."""
    checks = (private_apis.is_avx512_bf16_supported, private_apis.is_amx_tile_supported)
    return available() and any(check() for check in checks if check is not None)


class PrepackedLinear(nn.Module):
    """``nn.Linear`` with its weight held in oneDNN's blocked layout, in ``dtype``.

    The input is rounded to ``dtype`` for the product; the output is in
    ``dtype`` too, unless ``output_dtype`` asks for another (the layers whose
    output joins the fp32 residual stream).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, activation: tuple[str, str] = ("none", ""),
                 fused: nn.Module | None = None, dtype: torch.dtype = torch.float32,
                 output_dtype: torch.dtype | None = None):
        super().__init__()
        # The activation module the post-op stands for, kept (never called) so the model still says
        # which one it computes: a QuickGELU checkpoint's blocks list QuickGELU.
        self.fused = fused
        self.input_dtype = weight.dtype
        self.packed_weight = private_apis.reorder_linear_weight(weight.detach().to(dtype))
        if bias is not None and bias.dtype != dtype:
            bias = nn.Parameter(bias.detach().to(dtype), requires_grad=False)
        self.bias = bias  # a parameter of this module (mapped_pages.py copies a mapped one into memory)
        self.out_features, self.in_features = weight.shape
        self.dtype, self.output_dtype = dtype, output_dtype or dtype
        # oneDNN applies it to the product as it is written (a "post-op"): no second pass over the output.
        self.activation, self.algorithm = activation

    @property
    def weight(self) -> torch.Tensor:
        # open_clip reads ``c_fc.weight.dtype`` to pick the dtype of the text tower's residual stream:
        # the layer's input dtype, fp32 also when the product itself runs in bf16.
        if self.packed_weight.dtype == self.input_dtype:
            return self.packed_weight
        return torch.empty(0, dtype=self.input_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Casts only where the dtypes differ: fp32's path stays one op (a short text's pass makes hundreds).
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        out = private_apis.linear_pointwise(x.contiguous(), self.packed_weight, self.bias, self.activation, [],
                                            self.algorithm)
        return out if out.dtype == self.output_dtype else out.to(self.output_dtype)


class PrepackedSelfAttention(nn.Module):
    """``nn.MultiheadAttention`` (batch-first self-attention) with prepacked projections.

    Takes the same masks: a float mask is added to the scores; a boolean one
    marks the positions that may *not* be attended to; 3-D masks are per
    (batch x head), as ``encode_text_packed`` builds them.
    """

    def __init__(self, attn: nn.MultiheadAttention, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.num_heads = attn.num_heads
        self.embed_dim = attn.embed_dim
        self.batch_first = True
        # In bf16 the attention itself runs on the bf16 projections; its output returns to the stream's dtype.
        self.in_proj = PrepackedLinear(attn.in_proj_weight, attn.in_proj_bias, dtype=dtype)
        self.out_proj = PrepackedLinear(attn.out_proj.weight, attn.out_proj.bias, dtype=dtype,
                                        output_dtype=attn.out_proj.weight.dtype)

    def forward(self, query, key, value, need_weights: bool = False, attn_mask=None):
        if key is not query or value is not query or need_weights:
            raise ValueError("PrepackedSelfAttention does self-attention only, without weights")
        batch, length, width = query.shape
        heads = self.num_heads
        qkv = self.in_proj(query).view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                attn_mask = torch.zeros(attn_mask.shape, dtype=qkv.dtype).masked_fill_(attn_mask, float("-inf"))
            elif attn_mask.dtype != qkv.dtype:
                attn_mask = attn_mask.to(qkv.dtype)
            if attn_mask.dim() == 3:
                attn_mask = attn_mask.view(batch, heads, length, length)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width)), None


class PrepackedPatchEmbedding(nn.Module):
    """A ViT's patch embedding (``nn.Conv2d``, stride = kernel, no padding) as one prepacked matrix product.

    torch runs that convolution through oneDNN, which reorders its weight
    (9 MiB for ViT-B-32) on every call: ~12 ms of a ~110 ms one-image pass on
    these machines, and ~2,300 page faults for the fresh buffer. Cut into
    patches, the image is a (patches x 3·k·k) matrix and the convolution is
    its product with the weight: the same arithmetic, reordered once.
    """

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.out_channels = conv.out_channels
        self.kernel_size = conv.kernel_size
        self.linear = PrepackedLinear(conv.weight.reshape(conv.out_channels, -1), conv.bias, dtype=dtype,
                                      output_dtype=conv.weight.dtype)

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        (kh, kw), (rows, cols) = self.kernel_size, (height // self.kernel_size[0], width // self.kernel_size[1])
        # A stride-k convolution never reaches the last height % k rows and width % k columns.
        x = x[:, :, :rows * kh, :cols * kw]
        patches = x.reshape(batch, channels, rows, kh, cols, kw).permute(0, 2, 4, 1, 3, 5)
        out = self.linear(patches.reshape(batch * rows * cols, channels * kh * kw))
        return out.view(batch, rows, cols, self.out_channels).permute(0, 3, 1, 2)  # the convolution's layout


def _patch_embedding_swappable(conv: nn.Module | None) -> bool:
    return (type(conv) is nn.Conv2d and conv.stride == conv.kernel_size and conv.padding == (0, 0)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
            and conv.weight.dtype == torch.float32 and conv.weight.device.type == "cpu")


@torch.inference_mode()
def _swap_patch_embedding_checked(visual: nn.Module, on_swapped: Callable[[list[torch.Tensor]], None],
                                  dtype: torch.dtype = torch.float32) -> bool:
    """Swap the image tower's patch embedding if it gives the convolution's output on a random image."""
    conv = visual.conv1
    size = getattr(visual, "image_size", (224, 224))
    height, width = (size, size) if isinstance(size, int) else size
    x = torch.randn(1, conv.in_channels, height, width, generator=torch.Generator().manual_seed(0))
    swapped = PrepackedPatchEmbedding(conv, dtype)
    if not _agrees(swapped(x), conv(x), torch.zeros(()), dtype):
        return False
    visual.conv1 = swapped
    on_swapped([conv.weight])
    return True


def _swappable(block: nn.Module) -> bool:
    attn = getattr(block, "attn", None)
    mlp = getattr(block, "mlp", None)
    return (type(block) is private_apis.ResidualAttentionBlock and not hasattr(block, "ln_1_kv")
            and isinstance(attn, nn.MultiheadAttention) and attn.batch_first
            and attn.kdim == attn.vdim == attn.embed_dim  # one in_proj_weight for q, k and v
            and attn.bias_k is None and not attn.add_zero_attn
            and attn.in_proj_weight.dtype == torch.float32 and attn.in_proj_weight.device.type == "cpu"
            and isinstance(mlp, nn.Sequential)
            and isinstance(getattr(mlp, "c_fc", None), nn.Linear) and hasattr(mlp, "gelu")
            and isinstance(getattr(mlp, "c_proj", None), nn.Linear))


# QuickGELU(x) = x * sigmoid(1.702 x), which oneDNN's swish post-op (y * sigmoid(y)) computes for
# y = 1.702 x, times 1.702: the first layer's weights are scaled by it, the second's by its inverse.
_QUICK_GELU_SCALE = 1.702


def _swap(block: nn.Module, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, ...]:
    """Put the prepacked layers in ``block``; return the layers they replace (for ``_restore``).

    The MLP's activation goes into the first layer's product when oneDNN has
    it: GELU (exact or tanh) as such, open_clip's QuickGELU as a scaled swish
    (the real ViT-B-32 weights use QuickGELU). Another activation stays a
    module of its own.
    """
    attn, c_fc, act, c_proj = original = block.attn, block.mlp.c_fc, block.mlp.gelu, block.mlp.c_proj
    block.attn = PrepackedSelfAttention(attn, dtype)
    fc_weight, fc_bias, proj_weight = c_fc.weight, c_fc.bias, c_proj.weight
    post_op, fused = ("none", ""), act
    if type(act) is nn.GELU and act.approximate in ("none", "tanh"):
        post_op = ("gelu", act.approximate)
    elif type(act) is private_apis.QuickGELU:
        post_op = ("swish", "")
        fc_weight, proj_weight = fc_weight * _QUICK_GELU_SCALE, proj_weight / _QUICK_GELU_SCALE
        fc_bias = fc_bias * _QUICK_GELU_SCALE if fc_bias is not None else None
    else:
        fused = None  # the activation keeps running as its own module
    # In bf16 the MLP's hidden layer stays bf16 from one product to the next (4x the width: no round trip).
    block.mlp.c_fc = PrepackedLinear(fc_weight, fc_bias, post_op, fused, dtype=dtype)
    block.mlp.c_proj = PrepackedLinear(proj_weight, c_proj.bias, dtype=dtype, output_dtype=proj_weight.dtype)
    if fused is not None:
        block.mlp.gelu = nn.Identity()
    return original


def _restore(block: nn.Module, original: tuple[nn.Module, ...]) -> None:
    block.attn, block.mlp.c_fc, block.mlp.gelu, block.mlp.c_proj = original


def _unused_weights(original: tuple[nn.Module, ...]) -> list[torch.Tensor]:
    attn, c_fc, _, c_proj = original
    return [attn.in_proj_weight, attn.out_proj.weight, c_fc.weight, c_proj.weight]


def _agrees(output: torch.Tensor, expected: torch.Tensor, residual: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether a swapped layer's ``output`` is open_clip's ``expected`` for the precision ``dtype``.

    fp32: the same to 1e-4. bf16: what the layer adds to ``residual`` (its
    input, passed on unchanged; zero for a layer without one) is within
    _BF16_TOLERANCE of open_clip's, relative to its size.
    """
    if dtype == torch.float32:
        return torch.allclose(output, expected, rtol=_TOLERANCE, atol=_TOLERANCE)
    added, expected_added = output - residual, expected - residual
    return bool(torch.linalg.vector_norm(added - expected_added)
                <= _BF16_TOLERANCE * torch.linalg.vector_norm(expected_added))


@torch.inference_mode()
def _swap_checked(block: nn.Module, seed: int, causal: bool, dtype: torch.dtype = torch.float32) -> tuple | None:
    """Swap one block's matrix products; undo the swap unless it gives open_clip's output.

    Returns the replaced layers, or None (the block keeps them). The check
    runs the block as its tower does: the text tower's with a causal mask,
    the image tower's without one.
    """
    x = torch.randn(2, 7, block.attn.embed_dim, generator=torch.Generator().manual_seed(seed))
    mask = torch.full((7, 7), float("-inf")).triu_(1) if causal else None
    expected = block(x, attn_mask=mask)
    original = _swap(block, dtype)
    if _agrees(block(x, attn_mask=mask), expected, x, dtype):
        return original
    _restore(block, original)
    return None


def prepack(model: nn.Module, threads: int = 1,
            on_swapped: Callable[[list[torch.Tensor]], None] | None = None,
            dtype: torch.dtype = torch.float32) -> int:
    """Swap the linear layers of every standard block of ``model``'s text and image towers.

    Returns how many blocks were swapped (0 when oneDNN is missing or the
    architecture is not open_clip's standard block). The first block of each
    tower is checked against open_clip's own layers first; if it differs, the
    whole tower keeps open_clip's layers. One block per tower is enough: the
    check proves that oneDNN's two ops compute, on this CPU and torch build,
    what open_clip's layers compute for the tower's shapes and masks, and the
    blocks of a tower differ only in the values of their weights, which a
    reorder copies whatever they are. (Checking every block cost a third of
    the prepacking time, ~0.1 s of each cold start.)

    The original weights are released, so the model takes no extra memory.
    Blocks are independent, so ``threads`` of them are reordered at once
    (torch releases the GIL); each thread runs torch with the caller's
    intra-op thread count, so a Gunicorn master that keeps one thread (the
    fork hazard in gunicorn.conf.py) starts no thread pool here either.
    ``on_swapped`` gets the weights a swapped block no longer uses
    (loading.py releases their pages of a mapped file). ``dtype``
    bfloat16 runs the products in bf16 where the CPU has them (else fp32,
    with a warning); the checks then allow bf16's rounding (``_agrees``).
    """
    if not available():
        return 0
    if dtype != torch.float32 and not bf16_native():
        log.warning("this CPU has no native bfloat16 products (AVX512-BF16 or AMX); the model runs in fp32")
        dtype = torch.float32
    # CLIP's text tower is the model itself; CustomTextCLIP's (SigLIP, MobileCLIP) is model.text, causal or not.
    text = getattr(model, "text", None)
    towers = [(getattr(model, "transformer", None), True),
              (getattr(text, "transformer", None), getattr(text, "attn_mask", None) is not None),
              (getattr(getattr(model, "visual", None), "transformer", None), False)]
    towers = [([block for block in getattr(tower, "resblocks", ()) if _swappable(block)], causal)
              for tower, causal in towers]
    towers = [(blocks, causal) for blocks, causal in towers if blocks]
    released = on_swapped or (lambda weights: None)

    def check(numbered_tower) -> bool:
        seed, (blocks, causal) = numbered_tower  # a seed per tower: the same inputs in any order
        original = _swap_checked(blocks[0], seed, causal, dtype)
        if original is not None:
            released(_unused_weights(original))
        return original is not None

    def swap(block: nn.Module) -> None:
        with torch.inference_mode():
            released(_unused_weights(_swap(block, dtype)))

    visual = getattr(model, "visual", None)
    jobs = [functools.partial(check, tower) for tower in enumerate(towers)]
    if _patch_embedding_swappable(getattr(visual, "conv1", None)):
        jobs.append(functools.partial(_swap_patch_embedding_checked, visual, released, dtype))
    pool = ThreadPoolExecutor(threads, thread_name_prefix="prepack",
                              initializer=torch.set_num_threads, initargs=(torch.get_num_threads(),)) \
        if threads > 1 else None
    run = pool.map if pool is not None else map
    try:
        checked = list(run(lambda job: job(), jobs))  # the towers' first blocks and the patch embedding at once
        passed = checked[:len(towers)]
        rest = [block for (blocks, _), ok in zip(towers, passed) if ok for block in blocks[1:]]
        list(run(swap, rest))
    finally:
        if pool is not None:
            pool.shutdown()
    if not all(checked[len(towers):]):
        log.warning("oneDNN prepacking changed the output of the patch embedding; it keeps open_clip's convolution")
    failed = [blocks for (blocks, _), ok in zip(towers, passed) if not ok]
    if failed:
        log.warning("oneDNN prepacking changed the output of a tower's first block; the %d blocks of %d tower(s) "
                    "keep open_clip's layers", sum(len(b) for b in failed), len(failed))
    return sum(len(blocks) for (blocks, _), ok in zip(towers, passed) if ok)
