"""Request ids, structured logs, metrics and health probes, in-process."""

import json
import logging
import threading

import pytest

from clip_service import create_app
from clip_service.model.embedder import ClipEmbedder
from clip_service.ops.logs import CloudLoggingFormatter
from clip_service.ops.readiness import Readiness

from .helpers import TINY_MODEL, metric_value


def test_request_id_is_generated_and_returned(client):
    first = client.post("/embed/text", json={"texts": ["a"]}).headers["X-Request-ID"]
    second = client.post("/embed/text", json={"texts": ["a"]}).headers["X-Request-ID"]
    assert len(first) == 32 and first != second


@pytest.mark.parametrize("sent, kept", [("abc-123.x", True), ("a" * 129, False), ("bad id!", False)])
def test_request_id_header_is_honoured_when_sane(client, sent, kept):
    returned = client.get("/health/live", headers={"X-Request-ID": sent}).headers["X-Request-ID"]
    assert (returned == sent) is kept


def _summary(caplog):
    return [r for r in caplog.records if r.name == "clip_service.request"]


def test_one_summary_line_per_request_with_counts_failures_and_latency(client, image_server, caplog):
    caplog.set_level(logging.INFO)
    response = client.post("/embed/mixed", json={"texts": ["a", "b"], "urls": [
        image_server.url("/chelsea_0.jpg"), image_server.url("/missing.jpg"), "ftp://nope/x.png"]})
    assert response.status_code == 200
    (line,) = _summary(caplog)
    assert line.endpoint == "/embed/mixed" and line.status == 200 and line.method == "POST"
    assert line.items == {"text": 2, "image": 1}
    assert sum(line.failures.values()) == 2 and line.latency_ms > 0
    assert line.request_id == response.headers["X-Request-ID"]  # contextvar fields reach the record


def test_json_log_lines_carry_cloud_logging_fields(client, caplog):
    caplog.set_level(logging.INFO)
    trace_id = "105445aa7843bc8bf206b12000100000"
    response = client.post("/embed/text", json={"texts": ["secret text"]},
                           headers={"X-Cloud-Trace-Context": f"{trace_id}/1;o=1"})
    (record,) = _summary(caplog)
    line = json.loads(CloudLoggingFormatter().format(record))
    assert line["severity"] == "INFO" and line["message"] == "POST /embed/text 200" and line["time"]
    assert line["logging.googleapis.com/trace"].endswith(trace_id)
    assert line["logging.googleapis.com/spanId"] == "0000000000000001"
    assert line["request_id"] == response.headers["X-Request-ID"]
    assert "secret text" not in json.dumps(line)


def test_failed_download_warning_has_code_and_host_not_the_url_path(client, image_server, caplog):
    client.post("/embed/image", json={"urls": [image_server.url("/missing.jpg?token=abc")]})
    response = client.post("/embed/image", json={"urls": [image_server.url("/missing.jpg?token=abc")]})
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("clip_service")]
    assert warnings
    # Logged from a download thread, still tagged with the request's id.
    assert warnings[-1].request_id == response.headers["X-Request-ID"]
    text = json.dumps([json.loads(CloudLoggingFormatter().format(r)) for r in warnings])
    assert "127.0.0.1" in text and "token=abc" not in text and "WARNING" in text


def test_metrics_count_requests_items_failures_and_batches(client, image_server, photos):
    before = client.get("/metrics").get_data(as_text=True)
    client.post("/embed/text", json={"texts": ["a", "b", "c"]})
    client.post("/embed/image", json={"urls": [image_server.url("/chelsea_0.jpg"), image_server.url("/gone.jpg")]})
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    after = response.get_data(as_text=True)

    def delta(name, **labels):
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("clip_http_requests_total", endpoint="/embed/text", status="200") == 1
    assert delta("clip_items_embedded_total", modality="text") == 3
    assert delta("clip_items_embedded_total", modality="image") == 1
    assert delta("clip_item_failures_total", code="upstream_status") == 1
    assert delta("clip_batch_size_count", modality="text") >= 1
    assert delta("clip_http_request_duration_seconds_count", endpoint="/embed/image") == 1
    assert "clip_model_load_seconds" in after
    assert delta("clip_fetch_bytes_total") == len(photos["chelsea_0.jpg"])
    assert delta("clip_fetch_duration_seconds_count") == 1


def test_liveness_and_readiness(client):
    assert client.get("/health/live").status_code == 200
    response = client.get("/health/ready")
    assert response.status_code == 200 and response.get_json()["status"] == "ready"


def test_readiness_is_503_when_the_model_is_wedged(tiny_checkpoint):
    embedder = ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu")
    app = create_app({"TESTING": True, "batch_runners": 1}, embedder=embedder)
    # The probe on a clock the test moves: a cached "ready" expires without waiting it out.
    now = [100.0]
    app.extensions["clip_readiness"] = Readiness(embedder, ttl=5, timeout=0.2, clock=lambda: now[0])
    client = app.test_client()
    assert client.get("/health/ready").status_code == 200
    acquired, release = threading.Event(), threading.Event()

    def endless_forward_pass():
        embedder._forward_slots.acquire()
        acquired.set()
        release.wait(10)

    holder = threading.Thread(target=endless_forward_pass)
    holder.start()
    assert acquired.wait(5)
    now[0] += 5  # the cached "ready" expires
    try:
        response = client.get("/health/ready")
        assert response.status_code == 503 and response.get_json()["status"] == "unready"
        assert client.get("/health/live").status_code == 200  # liveness stays cheap
    finally:
        release.set()
        holder.join()
        embedder._forward_slots.release()
    now[0] += 5
    assert client.get("/health/ready").status_code == 200


def test_readiness_result_is_cached(tiny_checkpoint):
    class CountingEmbedder:
        calls = 0

        def probe(self, timeout):
            self.calls += 1
            return True

    now = [100.0]
    embedder = CountingEmbedder()
    check = Readiness(embedder, ttl=5, timeout=1, clock=lambda: now[0])
    assert check() and check() and embedder.calls == 1
    now[0] += 5
    assert check() and embedder.calls == 2
