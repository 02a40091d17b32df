"""A cached value is served only as a finite unit vector of the model's length; anything else is a miss.

Redis is shared and anyone who can reach it can write to it: the tests overwrite
the values a real redis-server holds (NaN, infinities, zeros, 5.0, 1e30, wrong
lengths) and check every answer is the freshly computed unit vector, the bad
value is counted, logged at most once a minute, and overwritten by the good one.
"""

from __future__ import annotations

import base64
import logging
import time

import numpy as np
import pytest

from clip_service import create_app
from clip_service.cache.redis_tier import RedisTier
from clip_service.cache.vectors import LOG_INTERVAL_S, VectorCache, refusal
from clip_service.model.embedder import ClipEmbedder

from .helpers import TINY_MODEL, metric_value
from .test_cache import RedisServer, redis_server  # noqa: F401 - the fixture, and a real redis-server

DIMS = 32
TEXT = "a photo of a cat"

# The stored value, and the reason it is refused (the result label of clip_cache_requests_total).
BAD_VALUES = {
    "nan": (np.full(DIMS, np.nan, "<f4").tobytes(), "invalid_nonfinite"),
    "inf": (np.full(DIMS, np.inf, "<f4").tobytes(), "invalid_nonfinite"),
    "one nan": (np.r_[np.full(DIMS - 1, DIMS ** -0.5), np.nan].astype("<f4").tobytes(), "invalid_nonfinite"),
    "zeros": (np.zeros(DIMS, "<f4").tobytes(), "invalid_norm"),
    "fives": (np.full(DIMS, 5.0, "<f4").tobytes(), "invalid_norm"),
    "1e30": (np.full(DIMS, 1e30, "<f4").tobytes(), "invalid_norm"),
    "a unit vector too short": (np.full(DIMS - 1, (DIMS - 1) ** -0.5, "<f4").tobytes(), "invalid_length"),
    "a unit vector too long": (np.full(DIMS + 1, (DIMS + 1) ** -0.5, "<f4").tobytes(), "invalid_length"),
    "not whole floats": (b"\x00" * (DIMS * 4 + 3), "invalid_length"),
}


@pytest.fixture(scope="module")
def embedder(tiny_checkpoint):
    return ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu")


def _app(embedder, **settings):
    return create_app({"TESTING": True, "jpeg_draft": False, **settings}, embedder=embedder)


def _vectors(response) -> np.ndarray:
    assert response.status_code == 200, response.get_data(as_text=True)
    return np.array(response.get_json()["embeddings"], dtype=np.float64)


def _refused(client, reason: str, modality: str = "text") -> float:
    scrape = client.get("/metrics").get_data(as_text=True)
    return metric_value(scrape, "clip_cache_requests_total", modality=modality, tier="redis", result=reason)


def _wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _assert_unit_and_fresh(vectors: np.ndarray, fresh: np.ndarray) -> None:
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, fresh, atol=1e-5)


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_a_bad_value_in_redis_is_recomputed_counted_and_overwritten(case, embedder, redis_server):
    stored, reason = BAD_VALUES[case]
    fresh = _vectors(_app(embedder, cache_mb=0).test_client().post("/embed/text", json={"texts": [TEXT]}))
    # No in-process tier: every request reads Redis.
    client = _app(embedder, cache_mb=0, cache_redis_url=redis_server.url, cache_redis_timeout=1.0).test_client()
    client.post("/embed/text", json={"texts": [TEXT]})
    raw = redis_server.client()
    _wait_for(lambda: raw.dbsize() == 1)
    (key,) = raw.keys("clip:*")
    raw.set(key, stored)
    before = _refused(client, reason)

    _assert_unit_and_fresh(_vectors(client.post("/embed/text", json={"texts": [TEXT]})), fresh)

    assert _refused(client, reason) == before + 1
    _wait_for(lambda: raw.get(key) != stored)  # written in the background
    np.testing.assert_array_equal(np.frombuffer(raw.get(key), "<f4"), fresh[0].astype(np.float32))
    # From now on a hit again, served from Redis.
    hits = metric_value(client.get("/metrics").get_data(as_text=True), "clip_cache_requests_total",
                        modality="text", tier="redis", result="hit")
    _assert_unit_and_fresh(_vectors(client.post("/embed/text", json={"texts": [TEXT]})), fresh)
    assert metric_value(client.get("/metrics").get_data(as_text=True), "clip_cache_requests_total",
                        modality="text", tier="redis", result="hit") == hits + 1
    assert _refused(client, reason) == before + 1


def test_bad_image_vectors_and_rank_scores_are_never_served(embedder, redis_server, photos):
    uri = "data:image/png;base64," + base64.b64encode(photos["camera.png"]).decode()
    rank_body = {"query": uri, "query_modality": "image", "documents": ["a cat", "a camera", "coffee"]}
    fresh_app = _app(embedder, cache_mb=0).test_client()
    fresh_image = _vectors(fresh_app.post("/embed/image", json={"urls": [uri]}))
    fresh_rank = fresh_app.post("/rank", json=rank_body).get_json()["results"]
    client = _app(embedder, cache_mb=8, cache_redis_url=redis_server.url, cache_redis_timeout=1.0).test_client()
    client.post("/embed/image", json={"urls": [uri]})
    client.post("/rank", json=rank_body)
    raw = redis_server.client()
    _wait_for(lambda: raw.dbsize() == 4)  # the image and three texts
    for key in raw.keys("clip:*"):
        raw.set(key, np.full(DIMS, 1e30, "<f4").tobytes())
    before = {modality: _refused(client, "invalid_norm", modality) for modality in ("image", "text")}

    # A second app on the same Redis, as another instance would be (the first has them in memory).
    other = _app(embedder, cache_mb=8, cache_redis_url=redis_server.url, cache_redis_timeout=1.0).test_client()
    _assert_unit_and_fresh(_vectors(other.post("/embed/image", json={"urls": [uri]})), fresh_image)
    rank = other.post("/rank", json=rank_body).get_json()["results"]
    assert [r["index"] for r in rank] == [r["index"] for r in fresh_rank]
    assert [r["relevance_score"] for r in rank] == pytest.approx([r["relevance_score"] for r in fresh_rank],
                                                                 abs=1e-5)
    assert _refused(other, "invalid_norm", "image") == before["image"] + 1
    assert _refused(other, "invalid_norm", "text") == before["text"] + 3
    _wait_for(lambda: all(refusal(np.frombuffer(raw.get(k), "<f4"), DIMS) is None for k in raw.keys("clip:*")))


def test_refusals_are_logged_at_most_once_a_minute(embedder, redis_server, caplog):
    now = [1000.0]
    tier = RedisTier(redis_server.url, dimensions=DIMS, timeout=1.0)
    cache = VectorCache(_app(embedder, cache_mb=0).extensions["clip_pipeline"].cache.keys, max_bytes=0,
                        redis=tier, clock=lambda: now[0])
    raw = redis_server.client()
    keys = [f"key {i}".encode() for i in range(len(BAD_VALUES))]
    for key, (stored, _) in zip(keys, BAD_VALUES.values()):
        raw.set(b"clip:" + key, stored)
    caplog.set_level(logging.WARNING, logger="clip_service.cache.vectors")

    assert cache.get_many("text", keys) == [None] * len(keys)
    for _ in range(3):  # within the minute: counted, not logged
        now[0] += 10
        assert cache.get_many("text", keys[:2]) == [None, None]
    lines = lambda: [r.getMessage() for r in caplog.records if r.name == "clip_service.cache.vectors"]  # noqa: E731
    (line,) = lines()
    assert f"refused {len(keys)} cached values" in line and "redis invalid_length: 3" in line
    assert "redis invalid_norm: 3" in line and "redis invalid_nonfinite: 3" in line

    now[0] += LOG_INTERVAL_S
    cache.get_many("text", keys[:1])
    assert len(lines()) == 2
    assert "refused 7 cached values" in lines()[1]  # the 6 since the first line, and this one


@pytest.mark.parametrize("vector, reason", [
    (np.full(DIMS, DIMS ** -0.5, np.float32), None),
    (np.r_[1.0 + 9e-4, np.zeros(DIMS - 1)].astype(np.float32), None),
    (np.r_[1.0 + 2e-3, np.zeros(DIMS - 1)].astype(np.float32), "invalid_norm"),
    (np.full(DIMS, -np.inf, np.float32), "invalid_nonfinite"),
    (np.full(DIMS, 3e38, np.float32), "invalid_norm"),  # its squares overflow float32
    (np.zeros((2, DIMS // 2), np.float32), "invalid_length"),
])
def test_what_counts_as_a_vector(vector, reason):
    assert refusal(vector, DIMS) == reason


def test_nothing_is_stored_that_would_be_refused(embedder, redis_server):
    tier = RedisTier(redis_server.url, dimensions=DIMS, timeout=1.0)
    cache = VectorCache(_app(embedder, cache_mb=0).extensions["clip_pipeline"].cache.keys, max_bytes=1 << 20,
                        redis=tier)
    good = np.full(DIMS, DIMS ** -0.5, np.float32)
    cache.put_many([(b"nan", np.full(DIMS, np.nan, np.float32)), (b"good", good)])
    raw = redis_server.client()
    _wait_for(lambda: raw.dbsize() == 1)
    assert raw.keys("clip:*") == [b"clip:good"] and len(cache.memory) == 1
