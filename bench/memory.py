"""Memory and start-up of the service under Gunicorn, on a fixed-seed random ViT-B-32 checkpoint.

    python bench/memory.py                # writes bench/results/memory.md

1. Total PSS (/proc/<pid>/smaps_rollup, shared pages split between sharers)
   of master + workers with 1 and with 4 workers, after warm-up and traffic.
2. Seconds from starting ``gunicorn wsgi:app`` to the first 200 from /health.
3. A soak of a few thousand requests with worker RSS sampled as it goes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import photo_server, results_file, run_load, smoke_or, start_service  # noqa: E402
from bench.throughput import BATCH_URL_FILES, TEXTS  # noqa: E402
from tests.support.gunicorn import GunicornProcess  # noqa: E402
from tests.support.image_server import ImageServer  # noqa: E402


def traffic(svc: GunicornProcess, photos: ImageServer, texts: int = 40, images: int = 16) -> None:
    urls = [photos.url(f) for f in BATCH_URL_FILES]

    def send_text(session):
        return session.post(svc.base + "/embed/text", data=orjson.dumps({"texts": TEXTS[:8]}),
                            headers={"Content-Type": "application/json"}, timeout=60).status_code == 200

    def send_image(session):
        return session.post(svc.base + "/embed/image", data=orjson.dumps({"urls": urls[:4]}),
                            headers={"Content-Type": "application/json"}, timeout=60).status_code == 200

    run_load(send_text, clients=4, requests_total=texts, items_per_request=8)
    run_load(send_image, clients=4, requests_total=images, items_per_request=4)


def pss_by_workers(photos: ImageServer) -> dict:
    out = {}
    for workers in (1, 4):
        svc = start_service({"CLIP_WORKERS": str(workers), "CLIP_TORCH_THREADS": "1"}, photo_port=photos.port)
        try:
            time.sleep(smoke_or(2, 0))  # every worker has warmed up
            idle = svc.pss_mib()
            traffic(svc, photos)
            time.sleep(smoke_or(1, 0))  # the last responses' buffers freed
            busy = svc.pss_mib()
            out[workers] = {"startup_s": svc.startup_seconds, "pss_idle_mib": idle, "pss_after_traffic_mib": busy,
                            "processes": len(svc.pids())}
        finally:
            svc.stop()
        print(f"  {workers} worker(s): {out[workers]}", flush=True)
    return out


def startup_times(photos: ImageServer, runs: int = 3) -> list[float]:
    times = []
    for _ in range(runs):
        svc = start_service({}, photo_port=photos.port)
        times.append(svc.startup_seconds)
        svc.stop()
    print(f"  start-up: {times}", flush=True)
    return times


def worker_rss(svc: GunicornProcess) -> list[float]:
    return [mib for pid, mib in sorted(svc.rss_mib().items()) if pid != svc.proc.pid]


def soak(photos: ImageServer, total: int = 3000, step: int = 500) -> list[dict]:
    # Recycling off for the soak, so growth (if any) is visible rather than reset.
    svc = start_service({"CLIP_MAX_REQUESTS": "1000000"}, photo_port=photos.port)
    samples = []
    try:
        def send(session):
            return session.post(svc.base + "/embed/text", data=orjson.dumps({"texts": TEXTS[:2]}),
                                headers={"Content-Type": "application/json"}, timeout=60).status_code == 200

        done = 0
        samples.append({"requests": 0, "worker_rss_mib": worker_rss(svc), "pss_total_mib": svc.pss_mib()})
        while done < total:
            result = run_load(send, clients=8, requests_total=step, items_per_request=2, max_seconds=120)
            done += result["requests"]
            samples.append({"requests": done, "worker_rss_mib": worker_rss(svc),
                            "pss_total_mib": svc.pss_mib()})
            print(f"  soak: {samples[-1]}", flush=True)
    finally:
        svc.stop()
    return samples


def main() -> None:
    photos = photo_server()
    report = {"pss": pss_by_workers(photos), "startup_s": startup_times(photos, runs=smoke_or(3, 1)),
              "soak": soak(photos, total=smoke_or(3000, 16), step=smoke_or(500, 16))}
    photos.close()
    results_file("memory.json").write_text(json.dumps(report, indent=2))
    md = render(report)
    results_file("memory.md").write_text(md)
    print(md)


def render(report: dict) -> str:
    pss = report["pss"]
    one, four = pss[1] if 1 in pss else pss["1"], pss[4] if 4 in pss else pss["4"]
    lines = ["| workers | PSS idle (MiB) | PSS after traffic (MiB) |", "| ---: | ---: | ---: |",
             f"| 1 | {one['pss_idle_mib']:.0f} | {one['pss_after_traffic_mib']:.0f} |",
             f"| 4 | {four['pss_idle_mib']:.0f} | {four['pss_after_traffic_mib']:.0f} |", "",
             f"4 workers / 1 worker, after traffic: {four['pss_after_traffic_mib'] / one['pss_after_traffic_mib']:.2f}x",
             "", "Start-up, `gunicorn wsgi:app` to the first 200 from /health (s): "
             + ", ".join(f"{t:.1f}" for t in report["startup_s"]), "",
             "| requests served | worker RSS (MiB) | total PSS (MiB) |", "| ---: | --- | ---: |"]
    for s in report["soak"]:
        lines.append(f"| {s['requests']} | {', '.join(f'{r:.0f}' for r in s['worker_rss_mib'])} | "
                     f"{s.get('pss_total_mib', 0):.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
