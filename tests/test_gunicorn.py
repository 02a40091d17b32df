"""End to end: a real ``gunicorn wsgi:app`` with preload, 2 workers and the real ViT-B-32 architecture."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import open_clip
import pytest
import requests
import torch
from PIL import Image

ROOT = Path(__file__).parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GunicornProcess:
    """``gunicorn wsgi:app`` in a subprocess on 127.0.0.1, its output in a file."""

    def __init__(self, env: dict[str, str], log_path: Path, extra_args: tuple[str, ...] = (), app: str = "wsgi:app"):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PORT": str(self.port), **env}
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", app, "--bind", f"127.0.0.1:{self.port}", *extra_args],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                if requests.get(self.base + "/health", timeout=2).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or a worker still booting
            time.sleep(0.3)
        raise AssertionError(f"gunicorn not healthy after {timeout}s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode


def log_records(log: str) -> list[dict]:
    """The JSON lines of a Gunicorn log (startup messages from libraries may not be JSON)."""
    records = []
    for line in log.splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
    return records


def worker_pids(log: str, path: str) -> set[int]:
    """Pids of the workers whose access log shows a 200 for ``path``."""
    return {r["pid"] for r in log_records(log)
            if r.get("logger") == "gunicorn.access" and r["httpRequest"]["requestUrl"] == path
            and r["httpRequest"]["status"] == 200}


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
            expected_image = model.encode_image(
                preprocess(Image.open(io.BytesIO(photos["chelsea_0.jpg"])).convert("RGB"))[None], normalize=True).numpy()
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
    assert code != 0
    assert "clip-service cannot start" in output and "ViT-B-32" in output and pretrained in output
    assert "CLIP_PRETRAINED" in output
    assert "Booting worker" not in output
