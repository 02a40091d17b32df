"""Caches of vectors: exact hits only, never a vector of another model, never a failed request."""
