"""A checkpoint's tensors, mapped from the file, fitted to the architecture as open_clip's ``load_checkpoint`` does.

The same forms open_clip accepts (a plain state dict, ``{"state_dict": ...}``,
``module.`` prefixes, a TorchScript file, safetensors, and its conversions of
older and third-party layouts), the same strict key and shape checks, but
each refusal in one line.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from . import private_apis


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, mapped from the file; the same unwrapping as open_clip's ``load_state_dict``."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        checkpoint = load_file(path, device="cpu")  # mapped, not read
    else:
        with open(path, "rb") as f:
            # Only torch.save's zip format can be mapped; older files are read.
            mappable = f.read(4) == b"PK\x03\x04"
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mappable)
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        state_dict = checkpoint["state_dict"]
    elif isinstance(checkpoint, torch.jit.ScriptModule):
        state_dict = checkpoint.state_dict()
        for key in ("input_resolution", "context_length", "vocab_size"):
            state_dict.pop(key, None)
    else:
        state_dict = checkpoint
    if not isinstance(state_dict, dict) or not state_dict:
        raise RuntimeError(f"{os.path.basename(path)} holds no state dict")
    if next(iter(state_dict)).startswith("module"):
        state_dict = {k[7:]: v for k, v in state_dict.items()}
    return state_dict


def fit_state_dict(model: nn.Module, state_dict: dict) -> dict:
    """open_clip's ``load_checkpoint`` adjustments, then each tensor in the dtype the model holds."""
    state_dict = private_apis.convert_state_dict(model, state_dict)
    if "positional_embedding" in state_dict and not hasattr(model, "positional_embedding"):
        state_dict = private_apis.convert_to_custom_text_state_dict(state_dict)
    for name in ("logit_scale", "logit_bias"):
        target = getattr(model, name, None)
        if name in state_dict and target is not None and target.ndim != state_dict[name].ndim:
            state_dict[name] = state_dict[name].reshape(target.shape)
    if "logit_bias" not in state_dict and getattr(model, "logit_bias", None) is not None:
        state_dict["logit_bias"] = torch.zeros_like(state_dict["logit_scale"])
    position_ids = "text.transformer.embeddings.position_ids"
    if position_ids in state_dict and not hasattr(model, position_ids):
        del state_dict[position_ids]
    _check_fits(model, state_dict, shapes=False)  # before the resizing, which asserts on a foreign layout
    private_apis.resize_pos_embed(state_dict, model)
    private_apis.resize_text_pos_embed(state_dict, model)
    _check_fits(model, state_dict, shapes=True)
    # load_state_dict copies into the model's dtype; assigning does not, so cast first.
    expected = model.state_dict(keep_vars=True)
    return {k: v.to(expected[k].dtype) if k in expected and v.dtype != expected[k].dtype else v
            for k, v in state_dict.items()}


def _check_fits(model: nn.Module, state_dict: dict, *, shapes: bool) -> None:
    """One line saying how the checkpoint differs from the architecture (load_state_dict's runs for pages)."""
    expected = model.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    reshaped = [k for k in expected if shapes and k in state_dict
                and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or reshaped:
        example = (missing or unexpected or reshaped)[0]
        raise RuntimeError(
            f"the checkpoint does not fit this architecture ({len(missing)} tensors missing, "
            f"{len(unexpected)} unexpected, {len(reshaped)} of another shape, such as {example!r})")
