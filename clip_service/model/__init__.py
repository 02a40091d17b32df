"""The model layer: open_clip weights, tokenizing, text and image encoding, batching. No web, no network."""

# First, so every module of this layer finds open_clip imported without what it never runs (lean_import.py)
# and the private symbols of torch and open_clip checked (private_apis.py).
from . import private_apis  # noqa: F401
