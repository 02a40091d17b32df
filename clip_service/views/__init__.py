"""Blueprints: thin views that validate, call the embedder or fetcher, and shape the answer."""
