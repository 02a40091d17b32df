"""Operating a real Gunicorn: metrics summed over workers, structured access logs, graceful SIGTERM."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from .helpers import metric_value, worker_pids
from .support.gunicorn import GunicornProcess, log_records
from .support.image_server import send_body

pytestmark = pytest.mark.e2e


@pytest.fixture
def slow_image_server(image_server, photos):
    """The image server with /slow.jpg, which answers after 3 seconds."""
    started = threading.Event()

    def slow(handler):
        started.set()
        time.sleep(3)
        send_body(handler, photos["chelsea_0.jpg"], "image/jpeg")

    image_server.routes["/slow.jpg"] = slow
    image_server.slow_started = started
    return image_server


@pytest.mark.timeout(240)
def test_metrics_logs_and_graceful_shutdown(vit_b32_checkpoint, slow_image_server, tmp_path):
    server = GunicornProcess({
        "CLIP_MODEL": "ViT-B-32", "CLIP_PRETRAINED": str(vit_b32_checkpoint),
        "CLIP_WORKERS": "2", "CLIP_THREADS": "4",
        "CLIP_FETCH_ALLOW": f"127.0.0.1:{slow_image_server.port}",
    }, tmp_path / "gunicorn.log")
    try:
        server.wait_healthy()

        # 1. Requests answered by both workers are summed in one /metrics scrape.
        def ask(_):
            with requests.Session() as session:
                return session.post(server.base + "/embed/text", json={"texts": ["a", "b"]}, timeout=60).status_code

        sent, deadline = 0, time.monotonic() + 90
        while len(worker_pids(server.output(), "/embed/text")) < 2 and sent < 160 and time.monotonic() < deadline:
            with ThreadPoolExecutor(8) as pool:
                assert set(pool.map(ask, range(16))) == {200}
            sent += 16
            time.sleep(0.2)
        assert len(worker_pids(server.output(), "/embed/text")) == 2
        for _ in range(3):  # whichever worker answers the scrape, the sums are the same
            text = requests.get(server.base + "/metrics", timeout=10).text
            assert metric_value(text, "clip_http_requests_total", endpoint="/embed/text", status="200") == sent
            assert metric_value(text, "clip_items_embedded_total", modality="text") == 2 * sent
            assert metric_value(text, "clip_model_load_seconds") > 0  # set once, in the master

        assert requests.get(server.base + "/health/ready", timeout=30).status_code == 200
        assert requests.get(server.base + "/health/live", timeout=10).status_code == 200

        # 2. Access log: JSON with httpRequest, the request id and the trace.
        trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        requests.get(server.base + "/health", timeout=10,
                     headers={"X-Request-ID": "req-42", "X-Cloud-Trace-Context": f"{trace}/7;o=1"})
        time.sleep(0.3)
        access = [r for r in log_records(server.output())
                  if r.get("logger") == "gunicorn.access" and r.get("request_id") == "req-42"]
        assert access and access[0]["severity"] == "INFO"
        assert access[0]["httpRequest"]["status"] == 200 and access[0]["logging.googleapis.com/trace"] == trace

        # 3. SIGTERM while a slow image request is in flight: it still completes, then Gunicorn exits 0.
        result = {}

        def slow_request():
            result["response"] = requests.post(
                server.base + "/embed/image", json={"urls": [slow_image_server.url("/slow.jpg")]}, timeout=30)

        client = threading.Thread(target=slow_request)
        client.start()
        assert slow_image_server.slow_started.wait(20)
        terminated_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        client.join(20)
        code = server.proc.wait(timeout=15)
        exited_after = time.monotonic() - terminated_at
        response = result["response"]
        assert response.status_code == 200 and len(response.json()["embeddings"][0]) == 512
        assert code == 0 and exited_after < 10
    finally:
        server.stop()
