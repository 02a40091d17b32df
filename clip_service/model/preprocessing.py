"""The image transform open_clip builds for a model, with a tag's or a converted file's settings."""

from __future__ import annotations

from dataclasses import asdict
from typing import Callable

import open_clip
from torch import nn

from . import private_apis


def preprocess_arguments(overlay: dict) -> dict:
    """Preprocessing settings as ``create_model_and_transforms`` arguments (it applies a tag's, not a file's)."""
    names = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation",
             "resize_mode": "image_resize_mode"}
    return {names[k]: overlay[k] for k in names if overlay.get(k) is not None}


def set_preprocess(model: nn.Module, overlay: dict) -> Callable:
    """The inference transform ``create_model_and_transforms`` returns, with the tag's settings."""
    preprocess_cfg = private_apis.PreprocessCfg
    cfg = private_apis.merge_preprocess_dict(asdict(preprocess_cfg()), overlay)
    visual = getattr(model, "visual", None)
    if visual is not None and hasattr(visual, "image_size"):
        cfg["size"] = visual.image_size
    open_clip.set_model_preprocess_cfg(model, cfg)
    return private_apis.image_transform_v2(preprocess_cfg(**model.visual.preprocess_cfg), is_train=False)
