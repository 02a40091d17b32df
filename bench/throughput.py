"""Throughput and latency of the service against plain in-process open_clip, side by side in one run.

    python bench/throughput.py            # writes bench/results/throughput.md

Starts Gunicorn on a fixed-seed random ViT-B-32 checkpoint (same FLOPs as the
real weights) and a local server with the photographs in ../shared/images.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (  # noqa: E402
    MODEL,
    PHOTOS,
    MemorySampler,
    best_of,
    checkpoint,
    make_texts,
    photo_server,
    results_file,
    run_load,
    smoke_or,
    start_service,
)
from tests.support.gunicorn import GunicornProcess  # noqa: E402
from tests.support.image_server import ImageServer  # noqa: E402

TEXTS = make_texts(512)
BATCH_URL_FILES = [f"/photo640/{p.name}" for p in sorted((PHOTOS / "photo640").iterdir())] + \
    ["/orig/rocket.jpg", "/orig/retina.jpg"]  # 16 JPEGs
LARGE_FILES = [f"/large/{p.name}" for p in sorted((PHOTOS / "large").iterdir())]


def post_json(session, url, body) -> bool:
    response = session.post(url, data=orjson.dumps(body), headers={"Content-Type": "application/json"},
                            timeout=120)
    if response.status_code != 200:
        return False
    payload = response.json()
    return not payload.get("errors")


def service_scenarios(svc: GunicornProcess, photos: ImageServer, *, only: tuple[str, ...] | None = None) -> dict:
    rng = random.Random(1)
    batch_urls = [photos.url(f) for f in BATCH_URL_FILES]
    large_urls = [photos.url(f) for f in LARGE_FILES]
    scenarios = {
        "text batch 32, 2 clients": (lambda s: post_json(s, svc.base + "/embed/text",
                                                         {"texts": rng.sample(TEXTS, 32)}), 2, 40, 32),
        "single text, 8 clients": (lambda s: post_json(s, svc.base + "/embed/text",
                                                       {"texts": [rng.choice(TEXTS)]}), 8, 480, 1),
        "single text, 1 client": (lambda s: post_json(s, svc.base + "/embed/text",
                                                      {"texts": [rng.choice(TEXTS)]}), 1, 60, 1),
        "image batch 16 URLs, 2 clients": (lambda s: post_json(s, svc.base + "/embed/image",
                                                               {"urls": batch_urls}), 2, 20, 16),
        "single image, 8 clients": (lambda s: post_json(s, svc.base + "/embed/image",
                                                        {"urls": [rng.choice(batch_urls)]}), 8, 96, 1),
        "single image, 1 client": (lambda s: post_json(s, svc.base + "/embed/image",
                                                       {"urls": [rng.choice(batch_urls)]}), 1, 24, 1),
        "12 MP JPEG, 2 clients": (lambda s: post_json(s, svc.base + "/embed/image",
                                                      {"urls": [rng.choice(large_urls)]}), 2, 16, 1),
    }
    results = {}
    for name, (send, clients, total, items) in scenarios.items():
        if only and name not in only:
            continue
        post_json(__import__("requests").Session(), svc.base + "/embed/text", {"texts": ["warm"]})
        results[name] = run_load(send, clients=clients, requests_total=total, items_per_request=items)
        print(f"  {name}: {results[name]}", flush=True)
    return results


def in_process_baselines(threads: int) -> dict:
    """Plain open_clip on the same machine: the limit the service is measured against."""
    import open_clip
    import torch
    from PIL import Image

    torch.set_num_threads(threads)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL, pretrained=str(checkpoint()))
    model.eval()
    tokenizer = open_clip.get_tokenizer(MODEL)
    images = [Image.open(PHOTOS / f.lstrip("/")).convert("RGB") for f in BATCH_URL_FILES[:smoke_or(16, 2)]]
    results = {}

    def timed(fn, items: int, rounds: int) -> dict:
        rounds = smoke_or(rounds, 1)
        fn()
        latencies = []
        for _ in range(rounds):
            started = time.perf_counter()
            fn()
            latencies.append(time.perf_counter() - started)
        return {"items_per_s": items * rounds / sum(latencies),
                "p50_ms": 1000 * float(np.median(latencies)), "p95_ms": 1000 * float(np.percentile(latencies, 95))}

    from clip_service.model import prepacked
    from clip_service.model.text_encoding import encode_text_packed, encode_text_trimmed

    # The service's model: the same weights with its transformer blocks prepacked for oneDNN.
    served, _, _ = open_clip.create_model_and_transforms(MODEL, pretrained=str(checkpoint()))
    served.eval()
    prepacked.prepack(served)

    batch = TEXTS[:smoke_or(32, 4)]
    texts, photos = len(batch), len(images)  # 32 and 16 (fewer in a smoke run)
    pixels = lambda: torch.stack([preprocess(i) for i in images])  # noqa: E731
    with torch.inference_mode():
        results[f"open_clip encode_text, batch {texts} (full 77 tokens), {threads} threads"] = timed(
            lambda: model.encode_text(tokenizer(batch), normalize=True), texts, 10)
        results[f"service's text encoder (packed, prepacked), batch {texts} (same texts), {threads} threads"] = timed(
            lambda: encode_text_packed(served, tokenizer(batch)), texts, 10)
        # Per core: the service runs each forward pass on one thread.
        torch.set_num_threads(1)
        results[f"open_clip encode_text, batch {texts} (full 77 tokens), 1 thread"] = timed(
            lambda: model.encode_text(tokenizer(batch), normalize=True), texts, 6)
        results[f"trimmed text encoder on open_clip's layers, batch {texts} (same texts), 1 thread"] = timed(
            lambda: encode_text_trimmed(model, tokenizer(batch)), texts, 10)
        results[f"packed text encoder on open_clip's layers, batch {texts} (same texts), 1 thread"] = timed(
            lambda: encode_text_packed(model, tokenizer(batch)), texts, 10)
        results[f"service's text encoder (packed, prepacked), batch {texts} (same texts), 1 thread"] = timed(
            lambda: encode_text_packed(served, tokenizer(batch)), texts, 10)
        torch.set_num_threads(threads)
        results[f"open_clip preprocess + encode_image, batch {photos}, {threads} threads"] = timed(
            lambda: model.encode_image(pixels(), normalize=True), photos, 6)
        results[f"open_clip preprocess + prepacked encode_image, batch {photos}, {threads} threads"] = timed(
            lambda: served.encode_image(pixels(), normalize=True), photos, 6)
    for name, value in results.items():
        print(f"  {name}: {value}", flush=True)
    return results


def json_microbench() -> dict:
    vectors = np.random.default_rng(0).standard_normal((256, 512)).astype(np.float32)
    body = {"embeddings": vectors}
    as_lists = {"embeddings": vectors.tolist()}

    from clip_service.web.jsonio import dumps_bytes

    ours = best_of(lambda: dumps_bytes(body), rounds=20)
    stdlib = best_of(lambda: json.dumps(as_lists), rounds=20)
    stdlib_with_tolist = best_of(lambda: json.dumps({"embeddings": vectors.tolist()}), rounds=20)
    return {"orjson_ms": ours * 1000, "stdlib_ms": stdlib * 1000, "stdlib_incl_tolist_ms": stdlib_with_tolist * 1000}


def decode_microbench() -> dict:
    """Full JPEG decode + preprocess vs draft-mode decode + preprocess of 12 MP photos, and the cosine."""
    import open_clip
    import torch

    from clip_service.images.decoding import decode_image

    torch.set_num_threads(1)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL, pretrained=str(checkpoint()))
    model.eval()
    out = {}
    full_t, draft_t, cosines = [], [], []
    for f in LARGE_FILES:
        data = (PHOTOS / f.lstrip("/")).read_bytes()
        repeats = smoke_or(3, 1)
        for draft, bucket in ((None, full_t), (224, draft_t)):
            started = time.perf_counter()
            for _ in range(repeats):
                preprocess(decode_image(data, max_pixels=10**8, draft_size=draft))
            bucket.append((time.perf_counter() - started) / repeats)
        with torch.inference_mode():
            a = model.encode_image(preprocess(decode_image(data, max_pixels=10**8))[None], normalize=True)
            b = model.encode_image(preprocess(decode_image(data, max_pixels=10**8, draft_size=224))[None],
                                   normalize=True)
        cosines.append(float((a * b).sum()))
    out["full_decode_ms"] = 1000 * float(np.mean(full_t))
    out["draft_decode_ms"] = 1000 * float(np.mean(draft_t))
    out["min_cosine"] = min(cosines)
    return out


def main() -> None:
    checkpoint()
    photos = photo_server()
    report: dict = {}

    print("in-process open_clip (2 torch threads: both cores)", flush=True)
    report["baseline"] = in_process_baselines(threads=2)
    report["json"] = json_microbench()
    print(f"  json: {report['json']}", flush=True)
    report["decode"] = decode_microbench()
    print(f"  decode: {report['decode']}", flush=True)

    default = {}  # 1 worker x 8 threads, 2 batch runners x 1 torch thread, batching on
    configs = {
        "default: 1 worker, 2 runners x 1 torch thread": default,
        "1 worker, 1 runner x 2 torch threads": {"CLIP_BATCH_RUNNERS": "1", "CLIP_TORCH_THREADS": "2"},
        "2 workers x 4 threads, 1 runner x 1 torch thread": {"CLIP_WORKERS": "2", "CLIP_THREADS": "4",
                                                             "CLIP_BATCH_RUNNERS": "1"},
        "default, batching off": {"CLIP_BATCHING": "false"},
        "default, JPEG draft off": {"CLIP_JPEG_DRAFT": "false"},
        "default, oneDNN prepack off": {"CLIP_ONEDNN_PREPACK": "false"},
    }
    single = ("single text, 8 clients", "single text, 1 client", "single image, 8 clients", "single image, 1 client")
    subsets = {
        "default, batching off": single,
        "default, JPEG draft off": ("12 MP JPEG, 2 clients",),
        "default, oneDNN prepack off": ("text batch 32, 2 clients", "single text, 8 clients", "single text, 1 client",
                                        "image batch 16 URLs, 2 clients", "single image, 8 clients"),
    }
    report["service"] = {}
    for name, env in smoke_or(configs, {next(iter(configs)): default}).items():  # a smoke run: the default only
        print(f"service: {name}", flush=True)
        # The vector cache off: the scenarios repeat texts and photos, and measure the model's path.
        svc = start_service({"CLIP_CACHE_MB": "0", **env}, photo_port=photos.port)
        sampler = MemorySampler(svc)
        try:
            results = service_scenarios(svc, photos, only=subsets.get(name))
        finally:
            peak = sampler.stop()
            svc.stop()
        report["service"][name] = {"startup_s": svc.startup_seconds, "peak_pss_mib": peak, "scenarios": results}

    photos.close()
    results_file("throughput.json").write_text(json.dumps(report, indent=2))
    results_file("throughput.md").write_text(render(report))
    print(render(report))


def render(report: dict) -> str:
    lines = ["| configuration | scenario | items/s | p50 ms | p95 ms | failures |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, value in report["baseline"].items():
        lines.append(f"| in-process | {name} | {value['items_per_s']:.1f} | {value['p50_ms']:.0f} | "
                     f"{value['p95_ms']:.0f} | 0 |")
    for config, data in report["service"].items():
        for scenario, r in data["scenarios"].items():
            lines.append(f"| {config} | {scenario} | {r['items_per_s']:.1f} | {r['p50_ms']:.0f} | "
                         f"{r['p95_ms']:.0f} | {r['failures']} |")
    lines.append("")
    lines.append("| configuration | start-up to first /health 200 (s) | peak PSS, master + workers (MiB) |")
    lines.append("| --- | ---: | ---: |")
    for config, data in report["service"].items():
        lines.append(f"| {config} | {data['startup_s']:.1f} | {data['peak_pss_mib']:.0f} |")
    j, d = report["json"], report["decode"]
    lines += ["", f"JSON, 256 x 512 float32 vectors: orjson {j['orjson_ms']:.2f} ms, stdlib json "
              f"{j['stdlib_ms']:.2f} ms ({j['stdlib_ms'] / j['orjson_ms']:.1f}x; "
              f"{j['stdlib_incl_tolist_ms'] / j['orjson_ms']:.1f}x counting numpy .tolist())",
              f"12 MP JPEG decode + preprocess: full {d['full_decode_ms']:.0f} ms, draft {d['draft_decode_ms']:.0f} ms "
              f"({d['full_decode_ms'] / d['draft_decode_ms']:.1f}x), min cosine to the full decode {d['min_cosine']:.4f}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
