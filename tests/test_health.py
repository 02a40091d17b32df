"""/health tells the truth about this worker: the model, its warm-up, and the last readiness inference."""

from __future__ import annotations

import pytest

from clip_service import create_app


@pytest.fixture
def fresh_app(tiny_checkpoint):
    # Its own embedder: these tests break it on purpose.
    from clip_service.model.embedder import ClipEmbedder

    from .helpers import TINY_MODEL

    return create_app({"TESTING": True}, embedder=ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu",
                                                                    precision="fp32"))


def _health(app) -> tuple[int, dict]:
    response = app.test_client().get("/health")
    return response.status_code, response.get_json()


def test_a_warmed_up_worker_is_healthy(fresh_app):
    fresh_app.extensions["clip_readiness"].warm_up()
    assert _health(fresh_app) == (200, {"status": "healthy", "model_loaded": True, "precision": "fp32"})


def test_a_failed_warm_up_makes_health_and_readiness_503(fresh_app, monkeypatch, caplog):
    def broken():
        raise RuntimeError("no usable kernels")

    monkeypatch.setattr(fresh_app.extensions["clip_embedder"], "_encode_probe", broken)
    assert fresh_app.extensions["clip_readiness"].warm_up() is False  # what post_worker_init calls: never raises
    assert _health(fresh_app) == (503, {"status": "unhealthy", "model_loaded": True, "precision": "fp32"})
    assert fresh_app.test_client().get("/health/ready").status_code == 503
    assert fresh_app.test_client().get("/health/live").status_code == 200  # alive: do not restart it blindly
    assert any("warm-up failed" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)


def test_a_failed_readiness_inference_makes_health_503_until_it_passes_again(fresh_app, monkeypatch):
    embedder = fresh_app.extensions["clip_embedder"]
    readiness = fresh_app.extensions["clip_readiness"]
    monkeypatch.setattr(embedder, "probe", lambda timeout: False)
    client = fresh_app.test_client()
    assert client.get("/health/ready").status_code == 503
    assert _health(fresh_app) == (503, {"status": "unhealthy", "model_loaded": True, "precision": "fp32"})
    monkeypatch.undo()
    readiness._checked_at = None  # the probe's cache (CLIP_READY_CACHE_SECONDS) has expired
    assert client.get("/health/ready").status_code == 200
    assert _health(fresh_app)[0] == 200
