"""Shared fixtures: a tiny real open_clip model, the app, and a local image server (helpers: helpers.py)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import open_clip
import pytest

from clip_service import create_app
from clip_service.model.embedder import ClipEmbedder

from .helpers import (  # noqa: F401 - re-exported: older tests import these from conftest
    FIXTURES,
    TESTS,
    TINY_MODEL,
    empty_caches,
    image_bytes,
    reference_image_vectors,
    reference_text_vectors,
)
from .support.checkpoints import write_random_checkpoint
from .support.image_server import ImageServer

# Register the tiny architecture with open_clip's real config registry before any fixture loads it.
open_clip.add_model_config(TESTS / "model_configs" / f"{TINY_MODEL}.json")


def pytest_collection_modifyitems(items):
    # The fast part (-m "not e2e") must stay fast: the full-size model belongs to end-to-end tests.
    unmarked = [item.nodeid for item in items
                if "vit_b32_checkpoint" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("e2e")]
    if unmarked:
        raise pytest.UsageError("mark these @pytest.mark.e2e, they load the full ViT-B-32: " + ", ".join(unmarked))


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
    # fp32, named: the tests compare its vectors with open_clip's to 1e-5 (the service's default,
    # CLIP_PRECISION=auto, runs bf16 on a CPU that has it; tests/test_precision.py covers that).
    return ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu", precision="fp32")


@pytest.fixture(scope="session")
def reference_model(tiny_checkpoint):
    """open_clip's own model, preprocessing and tokenizer for the same weights, to compare against."""
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL, pretrained=str(tiny_checkpoint))
    return model.eval(), preprocess, open_clip.get_tokenizer(TINY_MODEL)


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    """Real photographs: two JPEGs and a greyscale PNG."""
    return {p.name: p.read_bytes() for p in sorted(FIXTURES.iterdir()) if p.suffix in (".jpg", ".png")}


@pytest.fixture(scope="session")
def _image_server_process():
    # One listening server for the session, so the shared app can allowlist its port.
    with ImageServer() as server:
        yield server


@pytest.fixture
def image_server(_image_server_process, photos):
    """A local HTTP server on 127.0.0.1 serving the photos under /<name>; routes and logs fresh per test."""
    routes = {f"/{name}": ("image/jpeg" if name.endswith(".jpg") else "image/png", data)
              for name, data in photos.items()}
    _image_server_process.reset(routes)
    yield _image_server_process
    _image_server_process.reset(routes)  # what this test added goes, even for the shared app


@pytest.fixture(scope="session")
def shared_app(tiny_embedder, _image_server_process):
    """The app with the tiny model, built once: building one costs ~0.15 s (the OpenAPI document,
    the system CA store) and hundreds of tests only send it requests. Tests take it as ``app``."""
    # Loopback is blocked by default; exempt exactly the test image server's host:port.
    # JPEG draft decoding is off so image vectors can be compared with open_clip's
    # full decode to 1e-5: the tiny model's 32 px input makes every photo "large"
    # (draft mode has its own tests in test_images.py).
    server = _image_server_process
    return create_app({"TESTING": True, "fetch_allow": f"{server.host}:{server.port}", "jpeg_draft": False},
                      embedder=tiny_embedder)


@pytest.fixture
def app(shared_app):
    """The shared app: change it only through ``monkeypatch``; a test that breaks it on purpose builds its own.

    State that one request leaves for the next (the cached vectors) is reset here, so each test starts as
    on a new app.
    """
    empty_caches(shared_app)
    return shared_app


@pytest.fixture
def make_app(tiny_embedder, image_server):
    """A new app like ``app`` (the test image server allowed, no JPEG draft), with ``settings`` on top."""

    def make(**settings):
        return create_app({"TESTING": True, "fetch_allow": f"{image_server.host}:{image_server.port}",
                           "jpeg_draft": False, **settings}, embedder=tiny_embedder)

    return make


@pytest.fixture(autouse=True)
def _schemathesis_on_pytest_9(request):
    # schemathesis 4.32's lazy schemas read and rename ``node._nodeid``, which
    # pytest 9 replaced with ``node._id``; give it the attribute it reads.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # Requests to 127.0.0.1 must never go through a proxy from the environment.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def in_process(monkeypatch, tiny_checkpoint, image_server):
    """The CLIP_* settings for the model in-process (the bulk command): the tiny model, as ``app`` has it (fp32)."""
    for name, value in {"CLIP_MODEL": TINY_MODEL, "CLIP_PRETRAINED": str(tiny_checkpoint), "CLIP_JPEG_DRAFT": "0",
                        "CLIP_PRECISION": "fp32",
                        "CLIP_FETCH_ALLOW": f"{image_server.host}:{image_server.port}"}.items():
        monkeypatch.setenv(name, value)
