"""The vector cache: exact hits, never another model's vector, a byte bound, and Redis that can fail quietly."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest

from clip_service import create_app
from clip_service.cache.keys import CacheKeys, weights_identity
from clip_service.cache.memory import LruCache
from clip_service.cache.redis_tier import FAILURES_TO_TRIP, RedisTier
from clip_service.model.embedder import ClipEmbedder

from .helpers import TINY_MODEL
from .support.checkpoints import write_random_checkpoint
from .support.gunicorn import free_port

TEXTS = ["a photo of a cat", "a dog on a beach", "a photo of a cat", "coffee"]


def _app(embedder, **settings):
    return create_app({"TESTING": True, "jpeg_draft": False, **settings}, embedder=embedder)


@pytest.fixture
def fresh_embedder(tiny_checkpoint):
    return ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu")


def _passes(embedder) -> list[tuple[str, int]]:
    seen: list[tuple[str, int]] = []
    embedder.on_batch = lambda modality, size, seconds: seen.append((modality, size))
    return seen


def _data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


# --- exact hits ---------------------------------------------------------------------------------

def test_a_text_hit_is_bitwise_equal_to_a_fresh_computation(fresh_embedder):
    uncached = _app(fresh_embedder, cache_mb=0).test_client()
    fresh = np.array(uncached.post("/embed/text", json={"texts": TEXTS}).get_json()["embeddings"], dtype=np.float32)
    cached_app = _app(fresh_embedder, cache_mb=8)
    client = cached_app.test_client()
    first = client.post("/embed/text", json={"texts": TEXTS}).get_json()["embeddings"]
    passes = _passes(fresh_embedder)
    again = client.post("/embed/text", json={"texts": TEXTS}).get_json()["embeddings"]
    assert passes == []  # all hits: nothing went through the model
    assert np.array_equal(np.array(again, dtype=np.float32), fresh)
    assert np.array_equal(np.array(first, dtype=np.float32), fresh)


def test_an_image_hit_is_bitwise_equal_and_keyed_by_bytes_not_url(fresh_embedder, image_server, photos):
    image_server.add("/same-bytes.jpg", photos["chelsea_0.jpg"], "image/jpeg")
    allow = f"{image_server.host}:{image_server.port}"
    fresh = _app(fresh_embedder, cache_mb=0, fetch_allow=allow).test_client().post(
        "/embed/image", json={"urls": [image_server.url("/chelsea_0.jpg")]}).get_json()["embeddings"][0]
    client = _app(fresh_embedder, cache_mb=8, fetch_allow=allow).test_client()
    client.post("/embed/image", json={"urls": [image_server.url("/chelsea_0.jpg")]})
    passes = _passes(fresh_embedder)
    # Another URL with the same bytes, and the same bytes as a data URI: both hits.
    body = client.post("/embed/image", json={"urls": [image_server.url("/same-bytes.jpg"),
                                                      _data_uri(photos["chelsea_0.jpg"])]}).get_json()
    assert passes == []
    assert np.array_equal(np.array(body["embeddings"], dtype=np.float32), np.array([fresh, fresh], dtype=np.float32))


def test_within_a_request_identical_items_are_embedded_once(fresh_embedder, photos):
    client = _app(fresh_embedder, cache_mb=0).test_client()  # even with the cache off
    passes = _passes(fresh_embedder)
    texts = client.post("/embed/text", json={"texts": TEXTS}).get_json()["embeddings"]
    assert sum(size for modality, size in passes if modality == "text") == 3
    assert texts[0] == texts[2]
    passes.clear()
    uri = _data_uri(photos["camera.png"])
    images = client.post("/embed/image", json={"urls": [uri, uri[:-2] + uri[-2:], uri]}).get_json()["embeddings"]
    assert sum(size for modality, size in passes if modality == "image") == 1
    assert images[0] == images[1] == images[2]


def test_texts_with_equal_tokens_share_an_entry(fresh_embedder):
    client = _app(fresh_embedder, cache_mb=8).test_client()
    long_a, long_b = "word " * 100 + "apple", "word " * 100 + "pear"  # equal once truncated to 77 tokens
    passes = _passes(fresh_embedder)
    body = client.post("/embed/text", json={"texts": [long_a, long_b]}).get_json()["embeddings"]
    assert body[0] == body[1] and sum(size for _, size in passes) == 1


# --- keys ---------------------------------------------------------------------------------------

def _keys(**overrides) -> CacheKeys:
    options = dict(model_name="m", weights="w", device="cpu", prepacked=True, preprocess="p", draft_size=448)
    return CacheKeys(**{**options, **overrides})


@pytest.mark.parametrize("change", [{"model_name": "n"}, {"weights": "v"}, {"device": "cuda"},
                                    {"prepacked": False}, {"precision": "bf16"}])
def test_anything_that_changes_a_vector_changes_both_keys(change):
    tokens = np.array([49406, 320, 2368, 49407, 0, 0])
    assert _keys(**change).text_key(tokens) != _keys().text_key(tokens)
    assert _keys(**change).image_key(b"img") != _keys().image_key(b"img")


def test_fp32_keys_are_those_of_the_versions_before_precision_was_a_setting():
    """A Redis tier filled before CLIP_PRECISION existed keeps its hits: fp32 adds nothing to the keys."""
    import hashlib

    from clip_service.cache.keys import FORMAT

    tokens = np.array([49406, 320, 49407, 0])
    before = hashlib.blake2b(f"{FORMAT}\0m\0w\0cpu\0prepacked=True\0text".encode(), digest_size=32)
    before.update(tokens[:3].astype(np.int64).tobytes())
    assert _keys(precision="fp32").text_key(tokens) == _keys().text_key(tokens) == before.digest()


@pytest.mark.parametrize("change", [{"preprocess": "q"}, {"draft_size": None}])
def test_preprocessing_and_draft_decoding_change_image_keys_only(change):
    tokens = np.array([49406, 320, 49407, 0])
    assert _keys(**change).image_key(b"img") != _keys().image_key(b"img")
    assert _keys(**change).text_key(tokens) == _keys().text_key(tokens)


def test_padding_is_not_content_but_every_token_is():
    keys = _keys()
    assert keys.text_key(np.array([49406, 320, 49407, 0, 0])) == keys.text_key(np.array([49406, 320, 49407]))
    assert keys.text_key(np.array([49406, 320, 49407])) != keys.text_key(np.array([49406, 321, 49407]))
    assert keys.text_key(np.array([49406, 320, 49407])) != keys.image_key(np.array([49406, 320, 49407]).tobytes())


def test_a_checkpoint_is_known_by_its_bytes(tmp_path):
    path = write_random_checkpoint(TINY_MODEL, tmp_path / "w.pt", seed=1)
    first = weights_identity(str(path))
    assert first.startswith("sha256:") and weights_identity(str(path)) == first
    write_random_checkpoint(TINY_MODEL, path, seed=2)  # replaced at the same path
    assert weights_identity(str(path)) != first
    assert weights_identity("laion400m_e32").startswith("tag:laion400m_e32")


def test_two_checkpoints_never_share_entries(tmp_path, photos):
    redis_like = {}
    first = ClipEmbedder.load(TINY_MODEL, str(write_random_checkpoint(TINY_MODEL, tmp_path / "a.pt", 1)), "cpu")
    second = ClipEmbedder.load(TINY_MODEL, str(write_random_checkpoint(TINY_MODEL, tmp_path / "b.pt", 2)), "cpu")
    for embedder in (first, second):
        cache = _app(embedder, cache_mb=8).extensions["clip_pipeline"].cache
        redis_like[embedder] = (cache.keys.text_key(np.array([49406, 320, 49407])),
                                cache.keys.image_key(photos["camera.png"]))
    assert set(redis_like[first]).isdisjoint(redis_like[second])


# --- the in-process tier ------------------------------------------------------------------------

def test_eviction_keeps_the_byte_bound_least_recently_used_first():
    lru = LruCache(10 * 400)
    vectors = {i: np.full(100, i, dtype=np.float32) for i in range(30)}  # 400 bytes each
    lru.put_many([(0, vectors[0]), (1, vectors[1])])
    for i in range(2, 30):
        lru.get_many([0])  # keep 0 in use
        lru.put_many([(i, vectors[i])])
        assert lru.bytes <= lru.max_bytes
    assert len(lru) == 10 and lru.evictions == 20
    assert lru.get_many([0])[0] is vectors[0] and lru.get_many([1]) == [None]


def test_the_lru_is_thread_safe():
    lru = LruCache(50 * 40)
    errors = []

    def hammer(seed: int) -> None:
        try:
            for i in range(2000):
                key = (seed * 7 + i) % 120
                lru.put_many([(key, np.full(10, key, dtype=np.float32))])
                got = lru.get_many([key, (key + 1) % 120])
                assert got[0] is None or got[0][0] == key
        except Exception as exc:  # pragma: no cover - a failure is reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == [] and lru.bytes <= lru.max_bytes
    assert lru.bytes == sum(v.nbytes for v in lru.get_many(list(range(120))) if v is not None)


def test_the_service_cache_stays_within_its_bound(fresh_embedder):
    app = _app(fresh_embedder, cache_mb=1)
    memory = app.extensions["clip_pipeline"].cache.memory
    client = app.test_client()
    for start in range(0, 600, 100):
        assert client.post("/embed/text", json={"texts": [f"text {i}" for i in range(start, start + 100)]}) \
            .status_code == 200
    assert memory.bytes <= 1 << 20 and len(memory) == 600  # 32-d vectors: all fit
    tight = _app(fresh_embedder, cache_mb=1).extensions["clip_pipeline"].cache.memory
    tight.max_bytes = 50 * 328  # 50 entries of a 32-d vector plus overhead
    tight.put_many([(i.to_bytes(4, "big"), np.zeros(32, dtype=np.float32)) for i in range(200)])
    assert len(tight) == 50 and tight.bytes <= tight.max_bytes and tight.evictions == 150


def test_zero_turns_the_cache_off(fresh_embedder):
    cache = _app(fresh_embedder, cache_mb=0).extensions["clip_pipeline"].cache
    assert not cache.enabled and cache.memory is None


def test_hits_are_counted_in_metrics_and_the_request_log(fresh_embedder, caplog):
    import logging

    client = _app(fresh_embedder, cache_mb=8).test_client()
    client.post("/embed/text", json={"texts": ["metrics probe text"]})
    caplog.set_level(logging.INFO, logger="clip_service.request")
    client.post("/embed/text", json={"texts": ["metrics probe text", "another text"]})
    summary = [r for r in caplog.records if r.name == "clip_service.request"][-1]
    assert summary.cache_hits == {"text": 1}
    scrape = client.get("/metrics").get_data(as_text=True)
    assert 'clip_cache_requests_total{modality="text",result="hit",tier="memory"}' in scrape
    assert "clip_cache_bytes" in scrape and "clip_cache_evictions_total" in scrape


# --- the shared tier: a real redis-server on 127.0.0.1 -------------------------------------------

class RedisServer:
    """redis-server on a free loopback port, which a test may kill and start again."""

    def __init__(self, tmp_path):
        binary = shutil.which("redis-server")
        if not binary:
            reason = "redis-server is not installed (apt-get install redis-server; .ci/run does it)"
            if os.environ.get("CI"):
                pytest.fail(reason)
            pytest.skip(reason)
        self.port = free_port()
        self.args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                     "--dir", str(tmp_path)]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self) -> "RedisServer":
        import redis

        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis.from_url(self.url, socket_timeout=0.5).ping()
                return self
            except redis.RedisError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=1)


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()


def _wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_instances_share_vectors_through_redis_as_compact_float32(tiny_checkpoint, redis_server):
    one = ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu")
    other = ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu")  # a second instance, same weights
    settings = {"cache_mb": 8, "cache_redis_url": redis_server.url, "cache_ttl_seconds": 3600}
    first = _app(one, **settings).test_client().post("/embed/text", json={"texts": ["shared text"]}).get_json()
    raw = redis_server.client()
    _wait_for(lambda: raw.dbsize() == 1)  # written in the background
    (key,) = raw.keys("clip:*")
    assert len(raw.get(key)) == 32 * 4 and 0 < raw.ttl(key) <= 3600
    other_client = _app(other, **settings).test_client()
    passes = _passes(other)
    second = other_client.post("/embed/text", json={"texts": ["shared text"]}).get_json()
    assert passes == [] and second["embeddings"] == first["embeddings"]


def test_a_redis_that_dies_mid_test_is_invisible_to_callers(fresh_embedder, redis_server):
    app = _app(fresh_embedder, cache_mb=0, cache_redis_url=redis_server.url, cache_redis_timeout=0.2)
    # The tier again, on a clock the test moves: the breaker's pause passes without waiting it out.
    now = [1000.0]
    tier = RedisTier(redis_server.url, dimensions=fresh_embedder.dimensions, timeout=0.2, retry_after=30,
                     clock=lambda: now[0])
    app.extensions["clip_pipeline"].cache.redis = tier
    client = app.test_client()
    assert client.post("/embed/text", json={"texts": ["before"]}).status_code == 200
    redis_server.kill()
    for i in range(FAILURES_TO_TRIP + 3):
        started = time.monotonic()
        response = client.post("/embed/text", json={"texts": [f"while down {i}"]})
        assert response.status_code == 200 and len(response.get_json()["embeddings"][0]) == 32
        assert time.monotonic() - started < 2.0
    assert not tier.available  # tripped: no more calls to a dead server for a while
    redis_server.start()
    vector = np.arange(fresh_embedder.dimensions, dtype="<f4")
    redis_server.client().set(b"clip:probe", vector.tobytes())
    assert tier.get_many([b"probe"]) == [None]  # still skipped, though Redis is back
    now[0] += tier.retry_after
    assert tier.available
    assert np.array_equal(tier.get_many([b"probe"])[0], vector)  # asked again
    client.post("/embed/text", json={"texts": ["after"]})
    _wait_for(lambda: redis_server.client().dbsize() >= 2)  # written to again


def test_a_slow_redis_costs_at_most_its_timeout(fresh_embedder, redis_server):
    app = _app(fresh_embedder, cache_mb=0, cache_redis_url=redis_server.url, cache_redis_timeout=0.1)
    client = app.test_client()
    client.post("/embed/text", json={"texts": ["warm"]})
    redis_server.proc.send_signal(19)  # SIGSTOP: connections stay open, nothing answers
    try:
        started = time.monotonic()
        assert client.post("/embed/text", json={"texts": ["while frozen"]}).status_code == 200
        assert time.monotonic() - started < 1.0
    finally:
        redis_server.proc.send_signal(18)  # SIGCONT


def test_a_full_redis_is_invisible_to_callers(fresh_embedder, tmp_path):
    server = RedisServer(tmp_path).start()
    try:
        raw = server.client()
        raw.set("filler", b"x" * (2 << 20))
        raw.config_set("maxmemory", "1mb")  # now past maxmemory: every write is refused
        raw.config_set("maxmemory-policy", "noeviction")
        app = _app(fresh_embedder, cache_mb=0, cache_redis_url=server.url)
        client = app.test_client()
        for i in range(5):
            assert client.post("/embed/text", json={"texts": [f"full {i}"]}).status_code == 200
        assert server.client().keys("clip:*") == []
    finally:
        server.kill()


def test_two_models_sharing_one_redis_never_read_each_others_vectors(tmp_path, redis_server):
    settings = {"cache_mb": 0, "cache_redis_url": redis_server.url}
    a = ClipEmbedder.load(TINY_MODEL, str(write_random_checkpoint(TINY_MODEL, tmp_path / "a.pt", 1)), "cpu")
    b = ClipEmbedder.load(TINY_MODEL, str(write_random_checkpoint(TINY_MODEL, tmp_path / "b.pt", 2)), "cpu")
    _app(a, **settings).test_client().post("/embed/text", json={"texts": ["same text"]})
    _wait_for(lambda: redis_server.client().dbsize() == 1)
    client_b = _app(b, **settings).test_client()
    passes = _passes(b)
    client_b.post("/embed/text", json={"texts": ["same text"]})
    assert sum(size for _, size in passes) == 1  # computed, not read from a's entry
    _wait_for(lambda: redis_server.client().dbsize() == 2)


def test_the_redis_tier_reads_only_well_formed_values(redis_server):
    tier = RedisTier(redis_server.url, dimensions=4)
    raw = redis_server.client()
    raw.set(b"clip:good", np.arange(4, dtype="<f4").tobytes())
    raw.set(b"clip:short", b"\x00" * 8)
    good, short, missing = tier.get_many([b"good", b"short", b"missing"])
    assert np.array_equal(good, np.arange(4, dtype=np.float32)) and short is None and missing is None
