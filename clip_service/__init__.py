"""clip-service: L2-normalised CLIP embeddings for texts and images over HTTP."""

from .app import create_app

__all__ = ["create_app"]
