"""Helpers shared by the tests: the tiny model's reference vectors, error-shape and still-serving
assertions, data URIs, Prometheus scrapes, and reading a real Gunicorn's log.

Fixtures live in conftest.py; what tests and benchmarks share (a real Gunicorn, the photo server,
random checkpoints) lives in support/; everything else a test calls directly lives here.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import requests
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from .support.gunicorn import log_records

TESTS = Path(__file__).parent
ROOT = TESTS.parent
FIXTURES = TESTS / "fixtures"
# A tiny architecture registered with open_clip's real config registry (conftest.py), so unit
# tests run open_clip's real code in milliseconds.
TINY_MODEL = "clip-service-tiny"

# A marker that tests put inside bad input: no error body may ever contain it.
SECRET = "confidential-4f2a"
STILL_FINE = {"texts": ["still fine"]}


# --- the model and images ---------------------------------------------------------------------

def reference_image_vectors(reference_model, images: list[Image.Image]) -> np.ndarray:
    """open_clip's own normalised image vectors for ``images``."""
    model, preprocess, _ = reference_model
    with torch.no_grad():
        return model.encode_image(torch.stack([preprocess(i) for i in images]), normalize=True).numpy()


def reference_text_vectors(reference_model, texts: list[str]) -> np.ndarray:
    """open_clip's own normalised text vectors for ``texts``."""
    model, _, tokenizer = reference_model
    with torch.no_grad():
        return model.encode_text(tokenizer(texts), normalize=True).numpy()


def image_bytes(img: Image.Image, fmt: str, **save_args) -> bytes:
    """``img`` encoded as ``fmt`` (PNG, JPEG, GIF...)."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_args)
    return buf.getvalue()


def as_image(data: bytes) -> Image.Image:
    """Decode image bytes to RGB the way open_clip's reference pipeline expects them."""
    return Image.open(io.BytesIO(data)).convert("RGB")


def data_uri(data: bytes, mime: str = "image/jpeg") -> str:
    """A base64 ``data:`` URI carrying ``data``."""
    return f"data:{mime};base64," + base64.b64encode(data).decode()


# --- error shapes -----------------------------------------------------------------------------

def _json_answer(response) -> tuple[str, str]:
    """The mimetype and text of a Flask test response or of a ``requests`` response."""
    if hasattr(response, "get_data"):
        return response.mimetype, response.get_data(as_text=True)
    return response.headers.get("Content-Type", "").split(";")[0].strip(), response.text


def assert_envelope(response, status: int) -> dict:
    """Assert the service's error envelope with ``status``, free of tracebacks and of SECRET; return it."""
    mimetype, text = _json_answer(response)
    assert response.status_code == status, text[:500]
    assert mimetype == "application/json"
    body = json.loads(text)
    assert set(body) == {"code", "status", "message", "errors"}
    assert body["code"] == status and body["status"] and body["message"]
    assert isinstance(body["errors"], dict)
    assert "Traceback" not in text and SECRET not in text
    return body


def assert_openai_error(response, status: int, *, param=None, code=None) -> dict:
    """Assert OpenAI's error shape with ``status`` (and ``param``, ``code`` when given); return the error."""
    mimetype, text = _json_answer(response)
    assert response.status_code == status, text[:500]
    assert mimetype == "application/json"
    body = json.loads(text)
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert "Traceback" not in text and SECRET not in text
    return error


# --- still serving ----------------------------------------------------------------------------

def assert_still_serving(client, dimensions: int | None = None) -> None:
    """Assert that ``client`` (a Flask test client, or the base URL of a real server) still embeds a text."""
    if isinstance(client, str):
        response = requests.post(client + "/embed/text", json=STILL_FINE, timeout=30)
        status, body = response.status_code, response.json()
    else:
        response = client.post("/embed/text", json=STILL_FINE)
        status, body = response.status_code, response.get_json()
    assert status == 200, body
    assert len(body["embeddings"]) == 1 and len(body["embeddings"][0]) == body["dimensions"]
    if dimensions is not None:
        assert body["dimensions"] == dimensions


def assert_v1_still_serving(client, model: str = TINY_MODEL) -> None:
    """Assert that the Flask test ``client`` still embeds a text through /v1/embeddings."""
    response = client.post("/v1/embeddings", json={"model": model, "input": "still fine"})
    assert response.status_code == 200 and len(response.get_json()["data"]) == 1


# --- a shared app --------------------------------------------------------------------------

def empty_caches(app) -> None:
    """Forget every vector the app's pipeline cached, so a shared app answers as a new one would."""
    pipeline = app.extensions["clip_pipeline"]
    for lru in (pipeline.cache.memory, pipeline.label_cache):
        if lru is not None:
            lru.clear()


# --- Prometheus -------------------------------------------------------------------------------

def metric_value(exposition: str, sample: str, **labels: str) -> float:
    """The sum of the samples named ``sample`` whose labels include ``labels`` (0 when there are none)."""
    return sum(s.value for family in text_string_to_metric_families(exposition) for s in family.samples
               if s.name == sample and labels.items() <= s.labels.items())


# --- a real Gunicorn's log ---------------------------------------------------------------------

def worker_pids(log: str, path: str) -> set[int]:
    """Pids of the workers whose access log shows a 200 for ``path``."""
    return {r["pid"] for r in log_records(log)
            if r.get("logger") == "gunicorn.access" and r["httpRequest"]["requestUrl"] == path
            and r["httpRequest"]["status"] == 200}


def assert_close_to_the_exact_decode(checkpoint: Path, exact, reduced) -> None:
    """``reduced`` (a draft or reduced decode) gives about the exact decode's pixels and ViT-B-32 vector."""
    import open_clip
    import torch

    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=str(checkpoint))
    a, b = preprocess(exact), preprocess(reduced)
    assert (a - b).abs().mean().item() < 0.05  # normalised pixel units (std ~1)
    with torch.no_grad():
        va = model.eval().encode_image(a[None], normalize=True)
        vb = model.encode_image(b[None], normalize=True)
    assert (va * vb).sum().item() >= 0.99
