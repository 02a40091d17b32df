"""Concurrent requests share forward passes; results stay per caller; a full queue sheds load."""

import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from clip_service import create_app
from clip_service.model.batching import MicroBatcher, Overloaded
from clip_service.model.embedder import ClipEmbedder

from .helpers import TINY_MODEL, assert_envelope, reference_text_vectors
from .support.image_server import send_body


def _slow_doubler(calls):
    def fn(payloads):
        calls.append([len(p) for p in payloads])
        time.sleep(0.05)
        return [[2 * x for x in p] for p in payloads]
    return fn


def test_concurrent_submits_share_batches_and_get_their_own_results():
    calls = []
    batcher = MicroBatcher(_slow_doubler(calls), max_batch=64, max_queue=100)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: batcher.submit([i, i + 100], 2), range(16)))
    assert results == [[2 * i, 2 * (i + 100)] for i in range(16)]
    assert len(calls) < 16  # some calls carried several callers' items
    assert max(sum(c) for c in calls) <= 64


def test_batches_respect_max_batch():
    calls = []
    batcher = MicroBatcher(_slow_doubler(calls), max_batch=4, max_queue=100)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: batcher.submit([i, i], 2), range(12)))
    assert all(sum(c) <= 4 for c in calls)


def test_errors_reach_every_caller_in_the_batch_and_the_thread_survives():
    def fail_on_negative(payloads):
        time.sleep(0.02)
        if any(x < 0 for p in payloads for x in p):
            raise ValueError("negative")
        return payloads

    batcher = MicroBatcher(fail_on_negative, max_batch=64, max_queue=100)
    with pytest.raises(ValueError):
        batcher.submit([-1], 1)
    assert batcher.submit([5], 1) == [5]


def test_full_queue_raises_overloaded():
    gate = threading.Event()

    def blocked(payloads):
        gate.wait(10)
        return payloads

    batcher = MicroBatcher(blocked, max_batch=8, max_queue=3)
    pool = ThreadPoolExecutor(2)
    running = pool.submit(batcher.submit, [1], 1)  # taken by the batch thread, then blocks
    time.sleep(0.1)
    queued = pool.submit(batcher.submit, [2, 3], 2)  # waits in the queue
    time.sleep(0.1)
    with pytest.raises(Overloaded):
        batcher.submit([4, 5], 2)
    gate.set()
    assert running.result(5) == [1] and queued.result(5) == [2, 3]
    pool.shutdown()


def _child_uses_batcher(batcher, queue):
    queue.put(batcher.submit([21], 1))


def test_a_forked_child_starts_its_own_batching_thread():
    batcher = MicroBatcher(lambda ps: [[2 * x for x in p] for p in ps], max_batch=8, max_queue=8)
    assert batcher.submit([1], 1) == [2]  # thread started in the parent
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_uses_batcher, args=(batcher, queue))
    child.start()
    child.join(20)
    assert child.exitcode == 0 and queue.get(timeout=5) == [42]


def test_batched_embedder_gives_open_clip_vectors_to_concurrent_callers(tiny_checkpoint, reference_model):
    embedder = ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu", precision="fp32")
    embedder.configure(parallel_forwards=2, batching=True, max_queue=512)
    sizes = []
    embedder.on_batch = lambda modality, size, seconds: sizes.append(size)
    texts = [f"text {i} " + "word " * (i % 7) for i in range(24)]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda t: embedder.embed_texts([t])[0], texts))
    expected = reference_text_vectors(reference_model, texts)
    assert np.abs(np.asarray(got) - expected).max() <= 1e-5
    assert sum(sizes) == 24


def test_full_queue_answers_503_with_retry_after(tiny_checkpoint):
    embedder = ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu")
    app = create_app({"TESTING": True, "batch_max_queue": 2, "batch_runners": 1}, embedder=embedder)
    client = app.test_client()
    batcher = embedder._batchers["text"]
    embedder._forward_slots.acquire()  # the model is busy
    pool = ThreadPoolExecutor(2)
    try:
        first = pool.submit(client.post, "/embed/text", json={"texts": ["a"]})
        deadline = time.monotonic() + 5
        while not batcher.started or batcher.queued:  # wait until the batch thread took it
            assert time.monotonic() < deadline
            time.sleep(0.01)
        second = pool.submit(client.post, "/embed/text", json={"texts": ["b", "c"]})
        while batcher.queued < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        response = client.post("/embed/text", json={"texts": ["d"]})
        assert_envelope(response, 503)
        assert response.headers["Retry-After"] == "1"
    finally:
        embedder._forward_slots.release()
    assert first.result(10).status_code == 200 and second.result(10).status_code == 200
    assert client.post("/embed/text", json={"texts": ["e"]}).status_code == 200
    pool.shutdown()


def test_idle_runners_share_a_large_request():
    """Two runners: a request split in two parts runs on both at once, not one after the other."""
    active, peak, lock = [0], [0], threading.Lock()

    def slow(payloads):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.2)
        with lock:
            active[0] -= 1
        return payloads

    batcher = MicroBatcher(slow, max_batch=64, max_queue=100, runners=2)
    started = time.monotonic()
    assert batcher.submit_many([([1] * 8, 8), ([2] * 8, 8)]) == [[1] * 8, [2] * 8]
    assert peak[0] == 2 and time.monotonic() - started < 0.35


def test_split_requests_give_the_same_vectors(tiny_checkpoint, reference_model):
    embedder = ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu", precision="fp32")
    embedder.configure(parallel_forwards=2, batching=True, max_queue=512)
    texts = [f"text {i} " + "word " * (i % 5) for i in range(20)]
    assert np.abs(embedder.embed_texts(texts) - reference_text_vectors(reference_model, texts)).max() <= 1e-5


def _recording(calls):
    def fn(payloads):
        calls.append(list(payloads))
        return payloads
    return fn


def _submit_later(batcher, payload, delay, expected=None):
    def run():
        time.sleep(delay)
        return batcher.submit_many([(payload, 1)], expected=expected)[0]
    return run


def test_an_idle_runner_waits_for_announced_items_and_runs_them_in_one_batch():
    """Two requests still downloading announce their images; the first to arrive waits for the other."""
    calls = []
    batcher = MicroBatcher(_recording(calls), max_batch=64, max_queue=100, dwell_s=5.0)
    first, second = batcher.expect(1), batcher.expect(1)
    assert batcher.expected == 2
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(_submit_later(batcher, "a", 0.0, first))
        b = pool.submit(_submit_later(batcher, "b", 0.3, second))
        assert (a.result(), b.result()) == ("a", "b")
    assert calls == [["a", "b"]]  # without the wait, "a" would have gone alone
    assert batcher.expected == 0


def test_a_lone_request_never_waits_for_company():
    calls = []
    batcher = MicroBatcher(_recording(calls), max_batch=64, max_queue=100, dwell_s=5.0)
    started = time.monotonic()
    with batcher.expect(3) as coming:
        assert batcher.submit_many([("x", 3)], expected=coming) == ["x"]
    assert time.monotonic() - started < 1.0 and calls == [["x"]] and batcher.expected == 0


def test_an_announcement_that_ends_without_items_releases_the_waiting_runner():
    """A request whose downloads all failed submits nothing: leaving its ``with`` ends the wait at once."""
    calls = []
    batcher = MicroBatcher(_recording(calls), max_batch=64, max_queue=100, dwell_s=5.0)
    failed = batcher.expect(2)
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        job = pool.submit(batcher.submit, "ok", 1)
        time.sleep(0.2)
        assert not job.done()  # waiting for the announced two
        with failed:
            pass
        assert job.result(timeout=2) == "ok"
    assert time.monotonic() - started < 1.5 and batcher.expected == 0


def test_the_wait_for_announced_items_is_bounded():
    batcher = MicroBatcher(_recording([]), max_batch=64, max_queue=100, dwell_s=0.3)
    batcher.expect(1)  # never comes, never ends
    started = time.monotonic()
    assert batcher.submit("x", 1) == "x"
    assert 0.25 <= time.monotonic() - started < 2.0


@pytest.mark.parametrize("waits", [{"window_s": 0.1}, {"dwell_s": 0.1}])
def test_runners_that_waited_together_for_one_item_both_survive(waits):
    """Both idle runners wait for company; one takes the lone item, the other must wait for more, not crash."""
    name = f"survivors-{next(iter(waits))}"
    batcher = MicroBatcher(_recording([]), max_batch=64, max_queue=100, runners=2, name=name, **waits)
    coming = batcher.expect(5) if "dwell_s" in waits else None
    for i in range(6):
        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(batcher.submit, i, 1).result(timeout=5) == i
        time.sleep(0.15)
    if coming is not None:
        coming.close()
    runners = [t for t in threading.enumerate() if t.name.startswith(f"clip-{name}-")]
    assert len(runners) == 2 and all(t.is_alive() for t in runners)


def test_a_request_waits_for_images_another_request_is_still_downloading(tiny_checkpoint, image_server, photos):
    """End to end: request A is stuck on a slow download; request B's image waits (up to the dwell) and
    shares A's forward pass; a failed download ends A's announcement like a good one."""
    embedder = ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu")
    app = create_app({"TESTING": True, "fetch_allow": f"{image_server.host}:{image_server.port}",
                      "jpeg_draft": False, "batch_runners": 1, "batch_dwell_ms": 10_000, "cache_mb": 0},
                     embedder=embedder)
    sizes = []
    embedder.on_batch = lambda modality, size, seconds: sizes.append((modality, size))
    gate = threading.Event()

    def slow(handler):
        gate.wait(10)
        send_body(handler, photos["coffee_0.jpg"], "image/jpeg")

    image_server.routes["/slow.jpg"] = slow
    batcher = embedder._batchers["image"]
    client = app.test_client()
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(client.post, "/embed/image",
                        json={"urls": [image_server.url("/chelsea_0.jpg"), image_server.url("/slow.jpg"),
                                       image_server.url("/missing.jpg")]})
        deadline = time.monotonic() + 10
        while batcher.expected != 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        b = pool.submit(client.post, "/embed/image", json={"urls": [image_server.url("/chelsea_0.jpg")]})
        time.sleep(0.5)
        assert not b.done() and sizes == []  # B's image waits for A's, which are still on their way
        gate.set()
        first, second = a.result(10), b.result(10)
    assert first.status_code == 200 and second.status_code == 200
    assert [len(v) for v in first.get_json()["embeddings"]] == [embedder.dimensions] * 2 + [0]
    assert sizes == [("image", 3)]  # one pass: A's two good images and B's
    assert batcher.expected == 0
