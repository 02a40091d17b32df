"""WSGI entry point: ``gunicorn wsgi:app``.

With Gunicorn's ``preload_app`` this module is imported once in the master,
so the model is loaded before the workers fork and shared copy-on-write.
"""

import sys

from clip_service import create_app
from clip_service.config import ConfigError
from clip_service.model.embedder import ModelLoadError

try:
    app = create_app()
except (ModelLoadError, ConfigError) as exc:
    # A short reason and a non-zero exit beat a traceback or, worse, random weights.
    print(f"clip-service cannot start: {exc}", file=sys.stderr, flush=True)
    sys.exit(3)
