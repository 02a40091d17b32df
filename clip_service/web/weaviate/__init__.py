"""Weaviate's multi2vec-clip inference API (CLIP_WEAVIATE): /vectorize, /meta and /.well-known/*."""
