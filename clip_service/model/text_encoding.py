"""open_clip's text tower without the wasted work: trimmed to the longest text, or packed end to end.

Both are exact rewrites of ``CLIP.encode_text(tokens, normalize=True)`` for
open_clip's standard text tower (checked against it to 1e-5 in the tests,
~1e-7 in practice); ``supports_*`` say when a model qualifies.
"""

from __future__ import annotations

import open_clip
import torch

from . import prepacked, private_apis
from .hub_tokenizer import HubTokenizer


def text_path_refusals(model, tokenizer=None) -> dict[str, str]:
    """Why text ``trimming`` and ``packing`` are off for ``model``, by path; {} when both apply.

    Both rely on a causal text tower pooled at the EOT token, where the padding
    after a text cannot reach its vector; SigLIP's and MobileCLIP2's towers
    attend both ways (and SigLIP pools the last, padded position), so every
    padding token changes the vector and they run as open_clip runs them.
    """
    tower = model if type(model) is open_clip.CLIP else getattr(model, "text", None)
    if private_apis.text_global_pool is None:
        why = "open_clip's text_global_pool is missing in this release"
    elif tower is None or getattr(tower, "attn_mask", None) is None:
        why = "its text tower has no causal mask (every token attends to the padding after it)"
    elif getattr(tower, "text_pool_type", None) not in ("argmax", "eos"):
        why = f"its text tower pools the {getattr(tower, 'text_pool_type', 'unknown')!r} position, not the EOT token"
    elif type(model) is not open_clip.CLIP:
        why = f"its text tower is {type(tower).__name__} under {type(model).__name__}, not open_clip's CLIP tower"
    elif isinstance(tokenizer, HubTokenizer):
        why = "its tokenizer is a Hugging Face tokenizer, whose padding id is not CLIP's 0 after the EOT token"
    else:
        why = ""
    if why:
        return {"trimming": why, "packing": why}
    if not supports_text_packing(model):
        return {"packing": "its text tower pools at the EOS id, or its blocks' attention is not open_clip's own"}
    return {}


def supports_text_trimming(model) -> bool:
    """True for open_clip's standard CLIP text tower: causal mask, pooled at the EOT token."""
    return (private_apis.text_global_pool is not None
            and type(model) is open_clip.CLIP and getattr(model, "attn_mask", None) is not None
            and getattr(model, "text_pool_type", None) in ("argmax", "eos"))


def encode_text_trimmed(model, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's ``CLIP.encode_text(tokens, normalize=True)``, run only up to the longest real text.

    The text transformer is causal, so the padding after a text's EOT token
    never influences the EOT position that is pooled: dropping the padding
    columns common to the whole batch gives the same vectors (to ~1e-7) for
    a fraction of the work (short texts use ~10 of the 77 positions).
    """
    if model.text_pool_type == "argmax":
        last = tokens.argmax(dim=-1)  # EOT has the highest token id
    else:
        last = (tokens == model.text_eos_id).int().argmax(dim=-1)
    length = int(last.max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = private_apis.text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    return _project_and_normalise(model, x)


def supports_text_packing(model) -> bool:
    """Packing needs argmax (EOT) pooling and open_clip's own attention blocks."""
    return (supports_text_trimming(model) and model.text_pool_type == "argmax"
            and all(isinstance(getattr(block, "attn", None),
                               (torch.nn.MultiheadAttention, prepacked.PrepackedSelfAttention))
                    for block in model.transformer.resblocks))


def encode_text_packed(model, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's ``CLIP.encode_text(tokens, normalize=True)`` with no padding work at all.

    Trimming still pads every text to the batch's longest; here the texts are
    laid end to end in a few rows (first-fit, longest first) of twice the
    longest text, each attending only to itself under a block-diagonal causal
    mask and using its own positions 0..n. Same vectors (~1e-7), and for texts
    of mixed lengths ~1.5x the throughput of trimming.
    """
    lengths = (tokens.argmax(dim=-1) + 1).tolist()  # through the EOT token (the highest id)
    capacity = 2 * max(lengths)
    rows: list[list[int]] = []
    used: list[int] = []
    slot: list[tuple[int, int]] = [(0, 0)] * len(lengths)
    for i in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
        row = next((r for r, u in enumerate(used) if u + lengths[i] <= capacity), None)
        if row is None:
            row = len(rows)
            rows.append([])
            used.append(0)
        rows[row].append(i)
        slot[i] = (row, used[row] + lengths[i] - 1)  # where its EOT lands
        used[row] += lengths[i]
    ids = torch.zeros((len(rows), capacity), dtype=tokens.dtype)
    positions = torch.zeros((len(rows), capacity), dtype=torch.long)
    owner = torch.full((len(rows), capacity), -1, dtype=torch.long)
    for r, members in enumerate(rows):
        start = 0
        for i in members:
            n = lengths[i]
            ids[r, start:start + n] = tokens[i, :n]
            positions[r, start:start + n] = torch.arange(n)
            owner[r, start:start + n] = i
            start += n
    col = torch.arange(capacity)
    allowed = (owner[:, :, None] == owner[:, None, :]) & (col[None, None, :] <= col[None, :, None])
    # Padding attends to itself, so no softmax row is all -inf (NaN would leak through 0 * NaN).
    allowed |= torch.eye(capacity, dtype=torch.bool)[None]
    cast_dtype = model.transformer.get_cast_dtype()
    mask = torch.zeros(allowed.shape, dtype=cast_dtype).masked_fill_(~allowed, float("-inf"))
    mask = mask.repeat_interleave(model.transformer.resblocks[0].attn.num_heads, dim=0)
    x = model.token_embedding(ids.to(model.token_embedding.weight.device)).to(cast_dtype)
    x = x + model.positional_embedding.to(cast_dtype)[positions.to(x.device)]
    x = model.transformer(x, attn_mask=mask.to(x.device))
    x = model.ln_final(x)
    x = x[torch.tensor([r for r, _ in slot]), torch.tensor([c for _, c in slot])]
    return _project_and_normalise(model, x)


def _project_and_normalise(model, x: torch.Tensor) -> torch.Tensor:
    """open_clip's ending of encode_text: the text projection (a matrix or a Linear), then unit length."""
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) \
            else x @ model.text_projection
    return torch.nn.functional.normalize(x, dim=-1)
