"""Pretrained tags: open_clip's registry entry, its QuickGELU flag, its download, and the label responses report."""

from __future__ import annotations

import os

import open_clip

from . import private_apis
from .converted import META_PRETRAINED, converted_metadata


def pretrained_tag_config(model_name: str, pretrained: str) -> dict:
    """open_clip's registry entry for a pretrained tag, or {} when it is a file path."""
    return open_clip.get_pretrained_cfg(model_name, pretrained) or {}


def needs_quick_gelu(model_name: str, pretrained: str) -> bool:
    """Whether the tag's weights were trained with QuickGELU.

    open_clip only *warns* when a plain config (e.g. ``ViT-B-32``, GELU) meets
    QuickGELU weights (``laion400m_e32``), and the vectors come out subtly
    wrong, so the tag's flag is forced onto the model here.
    """
    return bool(pretrained_tag_config(model_name, pretrained).get("quick_gelu", False))


def download(tag_cfg: dict, pretrained: str, cache_dir: str | None) -> str:
    """The tag's weights file, through open_clip's own download (and cache)."""
    private_apis.ensure_hub()
    try:
        path = private_apis.download_pretrained(tag_cfg, cache_dir=cache_dir or None)
    except Exception as exc:
        raise RuntimeError(f"Failed to download weights for tag '{pretrained}': {exc}") from exc
    if not path:
        raise RuntimeError(f"open_clip has no weights file for tag '{pretrained}'")
    return path


def pretrained_label(model_name: str, pretrained: str) -> str:
    """What the service reports as its weights: the tag, the tag a file was converted from, or the file's name.

    A file's directory is nobody's business. A file converted from a tag
    (convert.py) reports that tag, so an image that bakes the converted
    laion400m_e32 still answers ``"pretrained": "laion400m_e32"``.
    """
    if not os.path.isfile(pretrained):
        return pretrained
    try:
        source = converted_metadata(pretrained).get(META_PRETRAINED, "")
    except Exception:  # a label must never fail; the load reports a bad file
        source = ""
    return source if source and pretrained_tag_config(model_name, source) else os.path.basename(pretrained)
