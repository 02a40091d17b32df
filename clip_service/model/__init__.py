"""The model layer: open_clip weights, tokenizing, text and image encoding, batching. No web, no network."""

from .lean_import import import_open_clip

# First, so every module of this layer finds open_clip imported without what it never runs (lean_import.py).
import_open_clip()
