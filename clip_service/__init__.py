"""clip-service: L2-normalised CLIP embeddings for texts and images over HTTP."""

__all__ = ["create_app"]


def __getattr__(name: str):
    # Lazy, so ``clip_service.client`` imports without Flask, torch or open_clip.
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
