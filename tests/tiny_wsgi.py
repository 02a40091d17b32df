"""``gunicorn tests.tiny_wsgi:app``: the service with the tiny test model (CLIP_PRETRAINED names its checkpoint)."""

from pathlib import Path

import open_clip

from clip_service import create_app

# A fresh process knows only open_clip's own configs: register the tiny one as conftest.py does.
open_clip.add_model_config(Path(__file__).parent / "model_configs" / "clip-service-tiny.json")
app = create_app()
