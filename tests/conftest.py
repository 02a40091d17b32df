"""Shared fixtures: a tiny real open_clip model, the app, and a local image server."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from clip_service import create_app
from clip_service.model.embedder import ClipEmbedder

from .image_server import ImageServer

TESTS = Path(__file__).parent
FIXTURES = TESTS / "fixtures"
TINY_MODEL = "clip-service-tiny"

# A tiny architecture registered with open_clip's real config registry, so unit
# tests run open_clip's real code in milliseconds.
open_clip.add_model_config(TESTS / "model_configs" / f"{TINY_MODEL}.json")


def write_random_checkpoint(model_name: str, path: Path, seed: int = 0) -> Path:
    """Save a fixed-seed randomly initialised model of ``model_name`` (these carry no pretrained tag)."""
    torch.manual_seed(seed)
    model = open_clip.create_model(model_name, pretrained=None)
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return write_random_checkpoint(TINY_MODEL, tmp_path_factory.mktemp("tiny") / "tiny.pt")


@pytest.fixture(scope="session")
def vit_b32_checkpoint(tmp_path_factory) -> Path:
    """A fixed-seed random ViT-B-32 (the real architecture, ~600 MB) for end-to-end tests."""
    return write_random_checkpoint("ViT-B-32", tmp_path_factory.mktemp("vitb32") / "vit-b-32-random.pt")


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny model as an open_clip ``local-dir:`` (config and weights), loadable by a subprocess."""
    directory = tmp_path_factory.mktemp("tiny-model")
    config = json.loads((TESTS / "model_configs" / f"{TINY_MODEL}.json").read_text())
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": {}}))
    shutil.copy(tiny_checkpoint, directory / "open_clip_pytorch_model.bin")
    return directory


@pytest.fixture(scope="session")
def tiny_embedder(tiny_checkpoint) -> ClipEmbedder:
    return ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu")


@pytest.fixture(scope="session")
def reference_model(tiny_checkpoint):
    """open_clip's own model, preprocessing and tokenizer for the same weights, to compare against."""
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL, pretrained=str(tiny_checkpoint))
    return model.eval(), preprocess, open_clip.get_tokenizer(TINY_MODEL)


@pytest.fixture
def app(tiny_embedder, image_server):
    # Loopback is blocked by default; exempt exactly the test image server's host:port.
    # JPEG draft decoding is off so image vectors can be compared with open_clip's
    # full decode to 1e-5: the tiny model's 32 px input makes every photo "large"
    # (draft mode has its own tests in test_images.py).
    return create_app({"TESTING": True, "fetch_allow": f"{image_server.host}:{image_server.port}",
                       "jpeg_draft": False}, embedder=tiny_embedder)


@pytest.fixture
def client(app):
    return app.test_client()


def image_bytes(img: Image.Image, fmt: str, **save_args) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_args)
    return buf.getvalue()


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    """Real photographs: two JPEGs and a greyscale PNG."""
    return {p.name: p.read_bytes() for p in sorted(FIXTURES.iterdir()) if p.suffix in (".jpg", ".png")}


@pytest.fixture
def image_server(photos):
    """A local HTTP server on 127.0.0.1 serving the photos under /<name>."""
    with ImageServer() as server:
        for name, data in photos.items():
            server.add(f"/{name}", data, "image/jpeg" if name.endswith(".jpg") else "image/png")
        yield server


def reference_image_vectors(reference_model, images: list[Image.Image]) -> np.ndarray:
    model, preprocess, _ = reference_model
    with torch.no_grad():
        return model.encode_image(torch.stack([preprocess(i) for i in images]), normalize=True).numpy()


def reference_text_vectors(reference_model, texts: list[str]) -> np.ndarray:
    model, _, tokenizer = reference_model
    with torch.no_grad():
        return model.encode_text(tokenizer(texts), normalize=True).numpy()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # Requests to 127.0.0.1 must never go through a proxy from the environment.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
