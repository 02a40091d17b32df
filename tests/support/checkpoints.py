"""Fixed-seed random checkpoints of open_clip architectures: the model hubs are out of reach here."""

from __future__ import annotations

import os
from pathlib import Path


def write_random_checkpoint(model_name: str, path: Path, seed: int = 0) -> Path:
    """Save a fixed-seed randomly initialised model of ``model_name`` (these carry no pretrained tag)."""
    import open_clip  # here, not at the top: importing the harness must not cost torch
    import torch

    torch.manual_seed(seed)
    model = open_clip.create_model(model_name, pretrained=None)
    # Written whole, then renamed: a run killed mid-write leaves no truncated file for the next to reuse.
    partial = Path(f"{path}.partial-{os.getpid()}")
    torch.save(model.state_dict(), partial)
    partial.replace(path)
    return Path(path)

