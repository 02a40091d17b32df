"""The OpenAI-compatible API under /v1: its views (with its error shape) and its schemas."""
