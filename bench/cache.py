"""The vector cache, side by side in one run: the same request streams with the cache on and off.

    python bench/cache.py            # writes bench/results/cache.md and .json
    python bench/cache.py --quick    # a few hundred requests, to check the script

1. A Zipf-distributed stream (s = 1.1) of 20,000 single-text requests over 5,000
   distinct captions from 8 clients: how search-box traffic repeats itself.
2. Repeated images: 8 clients send single photos drawn from a catalogue of 24
   (the photos at several JPEG qualities), as a shop re-sends its product photos.
3. A soak with a small cache (4 MiB) and only distinct texts: the bytes held stay
   within the bound (clip_cache_bytes) and the worker's RSS stays flat.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (  # noqa: E402
    MODEL,
    PHOTOS,
    make_texts,
    photo_server,
    results_file,
    run_load,
    smoke_or,
    start_service,
)
from tests.support.gunicorn import status_kib  # noqa: E402


def zipf_stream(requests_total: int, distinct: int, s: float = 1.1, seed: int = 0) -> list[int]:
    """Indices 0..distinct-1 drawn with probability proportional to 1 / (rank ** s)."""
    weights = 1.0 / np.arange(1, distinct + 1) ** s
    rng = np.random.default_rng(seed)
    return list(rng.choice(distinct, size=requests_total, p=weights / weights.sum()))


def post(session, url: str, body: dict) -> bool:
    response = session.post(url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}, timeout=120)
    return response.status_code == 200 and not response.json().get("errors")


def stream_sender(base: str, path: str, key: str, items: list, order: list[int]):
    position = iter(range(len(order)))

    def send(session) -> bool:
        i = next(position, None)
        return True if i is None else post(session, base + path, {key: [items[order[i]]]})

    return send


def metric(base: str, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(requests.get(base + "/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def catalogue(folder: Path) -> list[str]:
    """24 product photos: each photo640 picture at three JPEG qualities (distinct bytes)."""
    names = []
    for source in sorted((PHOTOS / "photo640").iterdir())[:8]:
        image = Image.open(source).convert("RGB")
        for quality in (70, 85, 95):
            name = f"{source.stem}_q{quality}.jpg"
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=quality)
            (folder / name).write_bytes(buffer.getvalue())
            names.append(name)
    return names


def run(quick: bool) -> dict:
    text_requests, distinct = smoke_or((600, 150) if quick else (20_000, 5_000), (16, 8))
    image_requests = smoke_or(48 if quick else 400, 16)
    soak_texts = smoke_or(2_000 if quick else 20_000, 128)
    captions = make_texts(distinct, seed=3)
    order = zipf_stream(text_requests, distinct)
    results: dict = {"zipf": {"requests": text_requests, "distinct": distinct,
                              "distinct_in_stream": len(set(order))}}
    photos = photo_server()
    with tempfile.TemporaryDirectory(dir=PHOTOS) as folder:
        names = catalogue(Path(folder))
        urls = [photos.url(f"/{Path(folder).name}/{n}") for n in names]
        image_order = list(np.random.default_rng(1).integers(0, len(urls), size=image_requests))
        for label, cache_mb in (("off", "0"), ("on", "64")):
            svc = start_service({"CLIP_CACHE_MB": cache_mb}, photo_port=photos.port)
            try:
                texts = run_load(stream_sender(svc.base, "/embed/text", "texts", captions, order),
                                 clients=8, requests_total=text_requests, items_per_request=1, max_seconds=900)
                images = run_load(stream_sender(svc.base, "/embed/image", "urls", urls, image_order),
                                  clients=8, requests_total=image_requests, items_per_request=1, max_seconds=600)
                hits = {m: metric(svc.base, "clip_cache_requests_total", modality=m, result="hit")
                        for m in ("text", "image")}
                results[f"cache {label}"] = {"zipf texts": texts, "repeated images": images, "hits": hits}
                print(label, json.dumps(results[f"cache {label}"]), flush=True)
            finally:
                svc.stop()
    photos.close()

    # The soak: distinct texts only, so every request adds vectors and the LRU must evict.
    svc = start_service({"CLIP_CACHE_MB": "4"})
    try:
        worker = svc.pids()[1]
        samples = []
        soak = make_texts(soak_texts, seed=9)
        with requests.Session() as session:
            for start in range(0, soak_texts, 64):
                assert post(session, svc.base + "/embed/text", {"texts": soak[start:start + 64]})
                samples.append((start + 64, status_kib(worker, "VmRSS") / 1024, metric(svc.base, "clip_cache_bytes")))
        results["soak"] = {
            "texts": soak_texts, "bound_mib": 4.0,
            "max_cache_mib": max(b for _, _, b in samples) / 2**20,
            "evictions": metric(svc.base, "clip_cache_evictions_total"),
            "rss_mib": {"after 10%": samples[len(samples) // 10][1], "after 50%": samples[len(samples) // 2][1],
                        "end": samples[-1][1]},
        }
    finally:
        svc.stop()
    return results


def write(results: dict, quick: bool) -> None:
    off, on = results["cache off"], results["cache on"]
    lines = [
        "# Vector cache: on versus off, side by side in one run",
        "",
        f"`python bench/cache.py{' --quick' if quick else ''}`, {time.strftime('%Y-%m-%d')}, fixed-seed random "
        f"{MODEL}, 1 worker (the defaults otherwise).",
        "",
        f"Zipf stream (s = 1.1): {results['zipf']['requests']} single-text requests over "
        f"{results['zipf']['distinct']} captions ({results['zipf']['distinct_in_stream']} of them drawn), "
        "8 clients. Repeated images: single photos from a catalogue of 24, 8 clients.",
        "",
        "| scenario | cache off | cache on | on / off | p50 off / on (ms) | p95 off / on (ms) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("zipf texts", "repeated images"):
        a, b = off[name], on[name]
        lines.append(f"| {name} (items/s) | {a['items_per_s']:.1f} | {b['items_per_s']:.1f} | "
                     f"**{b['items_per_s'] / a['items_per_s']:.2f}x** | {a['p50_ms']:.0f} / {b['p50_ms']:.0f} | "
                     f"{a['p95_ms']:.0f} / {b['p95_ms']:.0f} |")
    lines += ["", f"Hits with the cache on: texts {on['hits']['text']:.0f}, images {on['hits']['image']:.0f}.", ""]
    soak = results["soak"]
    lines += [f"Soak: {soak['texts']} distinct texts with `CLIP_CACHE_MB=4`: at most "
              f"{soak['max_cache_mib']:.2f} MiB held (bound {soak['bound_mib']:.0f} MiB), "
              f"{soak['evictions']:.0f} evictions; worker RSS {soak['rss_mib']['after 10%']:.0f} MiB after 10% of "
              f"the requests, {soak['rss_mib']['after 50%']:.0f} MiB after half, {soak['rss_mib']['end']:.0f} MiB "
              "at the end.", ""]
    results_file("cache.md").write_text("\n".join(lines))
    results_file("cache.json").write_text(json.dumps(results, indent=2, default=float))
    print("\n".join(lines))


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    write(run(quick), quick)
