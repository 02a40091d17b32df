"""The OpenAI-compatible API under /v1: its views, schemas, error shape and vector encoding."""
