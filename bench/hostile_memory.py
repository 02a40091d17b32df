"""The worker's peak RSS under hostile image requests, measured the way issue #19 measured it.

    python bench/hostile_memory.py [--scenarios 16png,4x64]   # writes bench/results/hostile_memory.md

Each scenario starts a fresh `gunicorn wsgi:app` (fixed-seed random ViT-B-32, defaults otherwise), warms
it with one text, reads the worker's VmRSS, sends the requests, and reads the worker's VmHWM (its peak).
  16png: one POST /embed/image with 16 URLs of the same 7000 x 7000 solid-colour PNG (49 MP, 160 KB),
         each with its own query string: issue #19's request.
  4x64:  4 concurrent requests of 64 such URLs each, for a PNG, a GIF and a lossless WebP.
Run it from another checkout (an older commit) to compare: the results name the commit.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import MODEL, ROOT, results_file, smoke_or, start_service  # noqa: E402
from tests.support.gunicorn import status_kib  # noqa: E402
from tests.support.image_server import ImageServer  # noqa: E402

SIDE = smoke_or(7000, 500)


def serve_images():
    image = Image.new("RGB", (SIDE, SIDE), (200, 30, 30))
    files = {}
    for fmt, save, options in (("png", image, {}), ("gif", image.convert("P"), {}), ("webp", image, {"lossless": True})):
        buffer = io.BytesIO()
        save.save(buffer, fmt.upper(), **options)
        files[fmt] = buffer.getvalue()
    server = ImageServer().start()
    for fmt, data in files.items():
        server.add(f"/big.{fmt}", data, f"image/{fmt}")
    return server, {fmt: len(data) for fmt, data in files.items()}


def measure(images, requests_: list[list[str]]) -> dict:
    svc = start_service({"CLIP_CACHE_MB": "0"}, photo_port=images.port)
    try:
        worker = svc.pids()[1]
        requests.post(svc.base + "/embed/text", json={"texts": ["warm"]}, timeout=60)
        idle = status_kib(worker, "VmRSS") / 1024
        started = time.monotonic()
        with ThreadPoolExecutor(len(requests_)) as pool:
            answers = list(pool.map(lambda urls: requests.post(svc.base + "/embed/image", json={"urls": urls},
                                                               timeout=600), requests_))
        seconds = time.monotonic() - started
        peak = status_kib(worker, "VmHWM") / 1024
        codes, vectors = {}, 0
        for answer in answers:
            body = answer.json() if answer.status_code == 200 else {"errors": [], "embeddings": []}
            vectors += sum(1 for v in body["embeddings"] if v)
            for error in body["errors"]:
                codes[error["code"]] = codes.get(error["code"], 0) + 1
        return {"idle_mib": idle, "peak_mib": peak, "seconds": seconds, "statuses": [a.status_code for a in answers],
                "vectors": vectors, "errors": codes, "alive": svc.proc.poll() is None}
    finally:
        svc.stop()


def main() -> None:
    scenarios = "16png,4x64"
    for arg in sys.argv[1:]:
        if arg.startswith("--scenarios"):
            scenarios = arg.split("=", 1)[1] if "=" in arg else sys.argv[sys.argv.index(arg) + 1]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    images, sizes = serve_images()
    results = {"commit": commit, "sizes": sizes}
    try:
        if "16png" in scenarios:
            results["16 PNG URLs, 1 request"] = measure(images, [[images.url(f"/big.png?i={i}") for i in range(16)]])
            print(json.dumps(results["16 PNG URLs, 1 request"]), flush=True)
        if "4x64" in scenarios:
            for fmt in ("png", "gif", "webp"):
                batches = [[images.url(f"/big.{fmt}?r={r}&i={i}") for i in range(64)] for r in range(4)]
                results[f"4 x 64 {fmt.upper()} URLs"] = measure(images, batches)
                print(fmt, json.dumps(results[f"4 x 64 {fmt.upper()} URLs"]), flush=True)
    finally:
        images.close()
    lines = [f"# Worker peak RSS under hostile image requests (commit {commit})", "",
             f"`python bench/hostile_memory.py`, {time.strftime('%Y-%m-%d')}, fixed-seed random {MODEL}, "
             "defaults (decode budget 400 MiB), cache off.", "",
             "| scenario | idle RSS (MiB) | peak RSS (MiB) | peak - idle | time (s) | vectors | per-item errors |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        if isinstance(r, dict) and "peak_mib" in r:
            lines.append(f"| {name} | {r['idle_mib']:.0f} | {r['peak_mib']:.0f} | {r['peak_mib'] - r['idle_mib']:.0f} | "
                         f"{r['seconds']:.1f} | {r['vectors']} | {r['errors'] or '-'} |")
    results_file("hostile_memory.md").write_text("\n".join(lines) + "\n")
    results_file("hostile_memory.json").write_text(json.dumps(results, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
