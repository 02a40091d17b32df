"""What the benchmarks share beyond tests/support/: their model, photos, texts, a started service, load loops.

Gunicorn, the photo server and the checkpoint writer are the tests' own (tests/support/): one harness.
The environment sets up a run:

    BENCH_MODEL     the open_clip architecture (default ViT-B-32, the service's own default)
    BENCH_SMOKE=1   each script's smallest case, on ViT-S-32-alt unless BENCH_MODEL says otherwise
                    (tests/test_bench_smoke.py runs every script so)
    BENCH_RESULTS   where results go (default bench/results; a smoke run's: bench/.cache/smoke-results)
    BENCH_CACHE     where checkpoints are kept between runs (default bench/.cache)
    BENCH_PHOTOS    the photographs (default ../shared/images: large/, orig/, photo640/)
"""

from __future__ import annotations

import json
import os
import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from tests.support.gunicorn import ROOT, GunicornProcess
from tests.support.image_server import ImageServer

SMOKE = os.environ.get("BENCH_SMOKE") == "1"
# The smallest built-in ViT that open_clip's fast path and the converter cover like ViT-B-32 (about a
# quarter of its compute): a smoke run exercises the same code in seconds.
MODEL = os.environ.get("BENCH_MODEL") or ("ViT-S-32-alt" if SMOKE else "ViT-B-32")
CACHE = Path(os.environ.get("BENCH_CACHE", ROOT / "bench" / ".cache"))
# A smoke run's figures mean nothing: by default they stay out of bench/results.
RESULTS = Path(os.environ.get("BENCH_RESULTS") or (CACHE / "smoke-results" if SMOKE else ROOT / "bench" / "results"))
PHOTOS = Path(os.environ.get("BENCH_PHOTOS", ROOT.parent / "shared" / "images"))


WORDS = ("cat dog sunset beach mountain city street car red blue small large old new photo of a the "
         "with on in near under wooden metal glass painting drawing portrait landscape river forest "
         "snow rain night day happy child woman man bicycle train boat flower garden kitchen").split()


def smoke_or(full, smoke):
    """``smoke`` in a smoke run (BENCH_SMOKE=1), else ``full``."""
    return smoke if SMOKE else full


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))) for _ in range(n)]


def best_of(fn, rounds: int = 5) -> float:
    """The fastest of ``rounds`` timed calls of ``fn`` (seconds), after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(smoke_or(rounds, 1)):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def checkpoint(model_name: str = MODEL, seed: int = 0) -> Path:
    """A fixed-seed random checkpoint of the real architecture (hub weights are out of reach here), kept in CACHE."""
    from tests.support.checkpoints import write_random_checkpoint  # imports torch: only when one is needed

    path = CACHE / f"{model_name}-seed{seed}.pt"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        write_random_checkpoint(model_name, path, seed)
    return path


def results_file(name: str) -> Path:
    """``RESULTS/name``, its folder made."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    return RESULTS / name


def write_table(folder: str, stem: str, table: list[str], note: str, data: dict) -> None:
    """``stem``.md (the table and its note) and ``stem``.json (``data``) in ``folder``, made if need be."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{stem}.md").write_text("\n".join(table) + "\n\n" + note + "\n")
    (path / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")


def photo_server() -> ImageServer:
    """PHOTOS over HTTP on 127.0.0.1, started; ``url("/photo640/x.jpg")`` names a file."""
    return ImageServer(directory=PHOTOS).start()


def start_service(env: dict[str, str], photo_port: int | None = None, cwd: Path | None = None) -> GunicornProcess:
    """``gunicorn wsgi:app`` (from ``cwd``, another checkout) with the benchmark checkpoint and ``env`` on top,
    healthy; its ``startup_seconds`` are spawn to the first 200 from /health."""
    # fp32 unless ``env`` asks for bf16: the recorded figures (BENCHMARKS.md) are fp32's, and since #28 the
    # service's default, auto, runs bf16 on a CPU that has it (an older checkout ignores the variable).
    full = {"CLIP_MODEL": MODEL, "CLIP_PRETRAINED": str(checkpoint()), "LOG_LEVEL": "WARNING", "CLIP_PRECISION": "fp32",
            **env}
    if photo_port:
        full["CLIP_FETCH_ALLOW"] = f"127.0.0.1:{photo_port}"
    service = GunicornProcess(full, extra_args=("--access-logfile", "/dev/null"), cwd=cwd or ROOT)
    try:
        service.wait_healthy(timeout=180)
    except BaseException:
        service.stop()
        raise
    return service


class MemorySampler:
    """Sample a service's total PSS every 0.2 s; keep the peak."""

    def __init__(self, service: GunicornProcess):
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(service,), daemon=True)
        self._thread.start()

    def _run(self, service):
        while not self._stop.wait(0.2):
            try:
                self.peak = max(self.peak, service.pss_mib())
            except OSError:
                pass

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_load(send, *, clients: int, requests_total: int, items_per_request: int,
             max_seconds: float = 60) -> dict:
    """``clients`` threads call ``send(session)`` until ``requests_total`` are done (or time runs out).

    A smoke run sends at most two requests per client."""
    requests_total = smoke_or(requests_total, min(requests_total, 2 * clients))
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests_total))
    deadline = time.monotonic() + max_seconds
    failures = [0]

    def client():
        with requests.Session() as session:
            while time.monotonic() < deadline:
                with lock:
                    if next(counter, None) is None:
                        return
                started = time.perf_counter()
                ok = send(session)
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    failures[0] += 0 if ok else 1

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    wall = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies), "failures": failures[0],
        # Only answered requests count: a peer that fails fast must not look fast.
        "items_per_s": (len(latencies) - failures[0]) * items_per_request / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
    }
