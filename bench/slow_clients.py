"""What the buffering worker costs honest clients: Gunicorn's gthread and ours, side by side in one run.

    python bench/slow_clients.py          # writes bench/results/slow_clients.md

Both serve the fixed-seed random ViT-B-32 (bench/harness.py) with 8 threads; the
only difference is the worker class (GUNICORN_CMD_ARGS overrides gunicorn.conf.py).
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import orjson
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import best_of, make_texts, results_file, run_load, smoke_or, start_service  # noqa: E402
from tests.support.gunicorn import GunicornProcess  # noqa: E402

WORKERS = {"gthread (Gunicorn's)": "gthread", "BufferingWorker (ours)": "clip_service.ops.worker.BufferingWorker"}
TEXTS = make_texts(64)
ROUNDS = smoke_or(3, 1)
BIG_BODY = orjson.dumps({"texts": ["a cat"], "padding": "x" * (20 * 1024 * 1024)})  # 20 MiB: refused with 422


def post_texts(session, base: str, texts: list[str]) -> bool:
    response = session.post(base + "/embed/text", data=orjson.dumps({"texts": texts}),
                            headers={"Content-Type": "application/json"}, timeout=60)
    return response.status_code == 200


def big_upload(base: str) -> None:
    response = requests.post(base + "/embed/text", data=BIG_BODY, headers={"Content-Type": "application/json"},
                             timeout=60)
    assert response.status_code == 422, response.status_code


def liveness_under_stall(svc: GunicornProcess) -> float | None:
    """Seconds for /health/live while 16 connections have sent half a request line (None: no answer in 5 s)."""
    stalled = [socket.create_connection(("127.0.0.1", svc.port)) for _ in range(16)]
    try:
        for sock in stalled:
            sock.sendall(b"POST /embed/text HTT")
        time.sleep(0.5)
        started = time.perf_counter()
        try:
            requests.get(svc.base + "/health/live", timeout=5)
        except requests.Timeout:
            return None
        return time.perf_counter() - started
    finally:
        for sock in stalled:
            sock.close()


def measure(svc: GunicornProcess) -> dict:
    with requests.Session() as session:
        live = best_of(lambda: session.get(svc.base + "/health/live", timeout=10), rounds=50)
    single = run_load(lambda s: post_texts(s, svc.base, TEXTS[:1]), clients=8, requests_total=200,
                      items_per_request=1)
    batch = run_load(lambda s: post_texts(s, svc.base, TEXTS[:32]), clients=2, requests_total=20,
                     items_per_request=32)
    return {
        "/health/live, best of 50 (ms)": 1000 * live,
        "single text, 8 clients (items/s)": single["items_per_s"],
        "single text, 8 clients, p50 (ms)": single["p50_ms"],
        "text batch 32, 2 clients (items/s)": batch["items_per_s"],
        "20 MiB body to its 422, best of 5 (ms)": 1000 * best_of(lambda: big_upload(svc.base)),
    }


def main() -> None:
    # Both run at once and are measured in turns, ROUNDS times: drift in a shared machine's load
    # then falls on both alike. Each figure is the best of its rounds.
    services = {}
    try:
        for name, worker_class in WORKERS.items():
            services[name] = start_service({"GUNICORN_CMD_ARGS": f"--worker-class {worker_class}", "CLIP_THREADS": "8"})
        rounds = []
        for _ in range(ROUNDS):
            rounds.append({name: measure(svc) for name, svc in services.items()})
            print(json.dumps(rounds[-1]), flush=True)
        stalled = {name: liveness_under_stall(svc) for name, svc in services.items()}
    finally:
        for svc in services.values():
            svc.stop()
    best = {name: {key: (max if "items/s" in key else min)(r[name][key] for r in rounds) for key in rounds[0][name]}
            for name in services}
    theirs, ours = (best[name] for name in WORKERS)
    lines = [f"Best of {ROUNDS} alternating rounds, both services up at once (a shared, loaded 2-core machine).",
             "", "| measure | gthread | BufferingWorker | ours / gthread |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {key} | {theirs[key]:.1f} | {ours[key]:.1f} | {ours[key] / theirs[key]:.2f}x |" for key in theirs]
    for name, seconds in stalled.items():
        lines.append(f"\n/health/live with 16 connections stalled mid request line, {name}: "
                     + ("no answer within 5 s" if seconds is None else f"{seconds * 1000:.1f} ms"))
    results_file("slow_clients.json").write_text(json.dumps({"rounds": rounds, "best": best, "stalled_s": stalled},
                                                            indent=2))
    results_file("slow_clients.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
