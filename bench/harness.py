"""Pieces shared by the benchmarks: a fixed checkpoint, a photo server, a Gunicorn to measure, load loops."""

from __future__ import annotations

import functools
import http.server
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
PHOTOS = Path(os.environ.get("BENCH_PHOTOS", ROOT.parent / "shared" / "images"))


WORDS = ("cat dog sunset beach mountain city street car red blue small large old new photo of a the "
         "with on in near under wooden metal glass painting drawing portrait landscape river forest "
         "snow rain night day happy child woman man bicycle train boat flower garden kitchen").split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))) for _ in range(n)]


def best_of(fn, rounds: int = 5) -> float:
    """The fastest of ``rounds`` timed calls of ``fn`` (seconds), after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def checkpoint(model_name: str = "ViT-B-32", seed: int = 0) -> Path:
    """A fixed-seed random checkpoint of the real architecture (hub weights are out of reach here)."""
    path = CACHE / f"{model_name}-seed{seed}.pt"
    if not path.exists():
        import open_clip
        import torch

        CACHE.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed)
        torch.save(open_clip.create_model(model_name).state_dict(), path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PhotoServer:
    """Serve PHOTOS over HTTP on 127.0.0.1 (a static file server in a thread)."""

    def __init__(self):
        handler = functools.partial(_QuietHandler, directory=str(PHOTOS))
        self.httpd = _PhotoHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, relative: str) -> str:
        return f"http://127.0.0.1:{self.port}/{relative}"

    def urls(self, folder: str) -> list[str]:
        return [self.url(f"{folder}/{p.name}") for p in sorted((PHOTOS / folder).iterdir())]

    def close(self) -> None:
        self.httpd.shutdown()


class _PhotoHTTPServer(http.server.ThreadingHTTPServer):
    # socketserver's default backlog of 5 drops concurrent connects, and each
    # dropped SYN costs the client a 1 s retransmit: a web server has hundreds.
    request_queue_size = 256


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class Service:
    """``gunicorn wsgi:app`` on 127.0.0.1 with the benchmark checkpoint and ``env`` on top."""

    def __init__(self, env: dict[str, str], photo_port: int | None = None, cwd: Path | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        full = {**os.environ, "CLIP_MODEL": "ViT-B-32", "CLIP_PRETRAINED": str(checkpoint()),
                "HF_HUB_OFFLINE": "1", "LOG_LEVEL": "WARNING", **env}
        if photo_port:
            full["CLIP_FETCH_ALLOW"] = f"127.0.0.1:{photo_port}"
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "wsgi:app", "--bind", f"127.0.0.1:{self.port}",
             "--access-logfile", "/dev/null"],
            cwd=cwd or ROOT, env=full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.startup_seconds = self._wait_healthy()

    def _wait_healthy(self, timeout: float = 180) -> float:
        while time.monotonic() - self.started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if requests.get(self.base + "/health", timeout=1).status_code == 200:
                    return time.monotonic() - self.started
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError("gunicorn did not become healthy")

    def pids(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [self.proc.pid] + [int(c) for c in children]

    def pss_mib(self) -> float:
        """Total proportional set size of master + workers (shared pages split between them)."""
        return sum(pss_kib(pid) for pid in self.pids()) / 1024

    def rss_mib(self) -> dict[int, float]:
        return {pid: rss_kib(pid) / 1024 for pid in self.pids()}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _status_field(path: str, name: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid: int) -> int:
    return _status_field(f"/proc/{pid}/smaps_rollup", "Pss")


def rss_kib(pid: int) -> int:
    return _status_field(f"/proc/{pid}/status", "VmRSS")


class MemorySampler:
    """Sample a service's total PSS every 0.2 s; keep the peak."""

    def __init__(self, service: Service):
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
    """``clients`` threads call ``send(session)`` until ``requests_total`` are done (or time runs out)."""
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
        "items_per_s": len(latencies) * items_per_request / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
    }
