"""End to end: a real ``gunicorn wsgi:app`` with preload, 2 workers and the real ViT-B-32 architecture."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import open_clip
import pytest
import requests
import torch

from .helpers import as_image, worker_pids
from .support.gunicorn import GunicornProcess

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def vit_reference(vit_b32_checkpoint):
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=str(vit_b32_checkpoint))
    return model.eval(), preprocess, open_clip.get_tokenizer("ViT-B-32")


@pytest.mark.timeout(300)
def test_preloaded_gunicorn_with_two_workers_serves_correct_vectors(
        vit_b32_checkpoint, vit_reference, image_server, photos, tmp_path):
    server = GunicornProcess({
        "CLIP_MODEL": "ViT-B-32", "CLIP_PRETRAINED": str(vit_b32_checkpoint),
        "CLIP_WORKERS": "2", "CLIP_THREADS": "4",
        # open_clip's vectors to 1e-5: fp32, not the default auto (bf16 on a CPU that has it).
        "CLIP_PRECISION": "fp32",
        # Two torch threads per worker: without the fork-hazard handling the
        # workers hang at their first parallel op and this test times out.
        "CLIP_TORCH_THREADS": "2",
        # Loopback is blocked by default; exempt only the test image server.
        "CLIP_FETCH_ALLOW": f"{image_server.host}:{image_server.port}",
    }, tmp_path / "gunicorn.log")
    try:
        server.wait_healthy()
        model, preprocess, tokenizer = vit_reference
        texts = ["a photo of a cat", "a cup of coffee"]
        with torch.no_grad():
            expected_text = model.encode_text(tokenizer(texts), normalize=True).numpy()

        def ask(_):
            with requests.Session() as session:  # a fresh connection each time
                return session.post(server.base + "/embed/text", json={"texts": texts}, timeout=60)

        deadline = time.monotonic() + 120
        rounds = 0
        while len(worker_pids(server.output(), "/embed/text")) < 2 and rounds < 10 and time.monotonic() < deadline:
            with ThreadPoolExecutor(8) as pool:
                for response in pool.map(ask, range(16)):
                    assert response.status_code == 200
                    body = response.json()
                    assert body["dimensions"] == 512
                    got = np.asarray(body["embeddings"])
                    assert got.shape == (2, 512)
                    assert np.abs(got - expected_text).max() <= 1e-5
            rounds += 1
            time.sleep(0.2)  # the access log line is written after the response
        assert len(worker_pids(server.output(), "/embed/text")) == 2, server.output()[-3000:]

        url = image_server.url("/chelsea_0.jpg")
        response = requests.post(server.base + "/embed/image", json={"urls": [url]}, timeout=60)
        assert response.status_code == 200
        with torch.no_grad():
            expected_image = model.encode_image(preprocess(as_image(photos["chelsea_0.jpg"]))[None],
                                                normalize=True).numpy()
        assert np.abs(np.asarray(response.json()["embeddings"]) - expected_image).max() <= 1e-5

        log = server.output()
        assert log.count("warmed up") == 2  # warm-up ran in each worker, after the fork
    finally:
        server.stop()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pretrained", ["/no/such/weights.pt", "laion400m_e32"])
def test_gunicorn_refuses_to_start_without_weights(pretrained, tmp_path):
    server = GunicornProcess({"CLIP_MODEL": "ViT-B-32", "CLIP_PRETRAINED": pretrained}, tmp_path / "g.log")
    try:
        code = server.proc.wait(timeout=90)
    finally:
        server.stop()
    output = server.output()
    assert code == 3  # EXIT_MODEL_LOAD; a bad setting exits 78 (tests/test_bad_settings.py)
    last = [line for line in output.splitlines() if line.strip()][-1]
    assert last.startswith("clip-service cannot start") and "ViT-B-32" in last and pretrained in last
    assert "CLIP_PRETRAINED" in last and "Traceback" not in output
    assert "Booting worker" not in output


@pytest.mark.timeout(120)
def test_workers_collect_garbage_and_leave_the_preloaded_objects_frozen(tiny_checkpoint, tmp_path):
    """gunicorn.conf.py turns the collector off for the master's start (cold start) and back on before forking:
    a worker without it would keep every reference cycle for ever."""
    server = GunicornProcess({"CLIP_MODEL": "clip-service-tiny", "CLIP_PRETRAINED": str(tiny_checkpoint),
                              "CLIP_WORKERS": "1"}, tmp_path / "gunicorn.log", app="tests.gc_wsgi:app")
    try:
        server.wait_healthy()
        state = requests.get(server.base + "/test/gc", timeout=10).json()
        assert state["enabled"] is True
        assert state["frozen"] > 50_000  # torch's, open_clip's and the app's objects, out of the collector's reach
    finally:
        server.stop()
