"""What a converted checkpoint's header says (convert.py writes it): its source, and what loading it must apply.

A file path carries no tag, so ``python -m clip_service.model.convert``
records in the safetensors header what the tag would have told the service:
the architecture, the source, the QuickGELU flag and the preprocessing, and a
digest of the weights for the cache's keys.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch

from .errors import ModelLoadError

# Keys of the metadata a converted checkpoint carries in its safetensors header
# (convert.py): what it was converted from, and what loading it must apply.
META_MODEL = "clip_service.model"
META_PRETRAINED = "clip_service.pretrained"
META_QUICK_GELU = "clip_service.quick_gelu"
META_PREPROCESS = "clip_service.preprocess"
# SHA-256 of the weights' bytes (every tensor, by name), so a cache can key on them without hashing the file.
META_WEIGHTS_SHA256 = "clip_service.weights_sha256"


def weights_digest(tensors: dict) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def converted_metadata(path: str) -> dict[str, str]:
    """The clip_service.* entries of a converted checkpoint's header ({} for any other file)."""
    if not str(path).endswith(".safetensors"):
        return {}
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return {k: v for k, v in (f.metadata() or {}).items() if k.startswith("clip_service.")}


def converted_settings(path: str, model_name: str) -> tuple[bool, dict]:
    """(quick_gelu, preprocess overlay) recorded by convert.py; (False, {}) for any other file."""
    meta = converted_metadata(path)
    if not meta:
        return False, {}
    converted_for = meta.get(META_MODEL)
    if converted_for and converted_for != model_name:
        raise ModelLoadError(
            f"checkpoint file {os.path.basename(path)!r} holds {converted_for!r} weights "
            f"({meta.get(META_PRETRAINED, 'unknown source')}), not {model_name!r}: set CLIP_MODEL={converted_for}, "
            f"or CLIP_PRETRAINED to weights of {model_name}")
    overlay = json.loads(meta.get(META_PREPROCESS) or "{}")
    for key in ("mean", "std"):  # JSON lists back to the tuples open_clip's registry holds
        if isinstance(overlay.get(key), list):
            overlay[key] = tuple(overlay[key])
    return meta.get(META_QUICK_GELU) == "1", overlay
