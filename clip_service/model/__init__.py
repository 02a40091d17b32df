"""The model layer: open_clip weights, tokenizing, text and image encoding, batching. No web, no network."""
