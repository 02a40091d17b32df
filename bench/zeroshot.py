"""/classify with many labels: the first call (every label through the text tower) against repeated calls.

    python bench/zeroshot.py          # writes bench/results/zeroshot.md and .json

One photo against 1,000 distinct labels with one template, then the same call
again ten times (label vectors cached), side by side in one run on the same
service; and 500 labels with open_clip's 7 simple_imagenet templates (3,500
prompts on the first call).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import orjson
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import MODEL, PHOTOS, make_texts, photo_server, results_file, smoke_or, start_service  # noqa: E402

REPEATS = smoke_or(10, 1)


def classify(base: str, url: str, labels: list[str], template) -> float:
    started = time.perf_counter()
    response = requests.post(base + "/classify", data=orjson.dumps({
        "inputs": url, "parameters": {"candidate_labels": labels, "hypothesis_template": template}}),
        headers={"Content-Type": "application/json"}, timeout=900)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200 and len(response.json()) == len(labels), response.text[:300]
    return elapsed


def run() -> dict:
    photos = photo_server()
    url = photos.url("/photo640/" + sorted(p.name for p in (PHOTOS / "photo640").iterdir())[0])
    results = {}
    # The general vector cache is off, so the first call is a real first call for every label.
    svc = start_service({"CLIP_CACHE_MB": "0"}, photo_port=photos.port)
    try:
        for name, template, count, seed in (("1,000 labels x 1 template", "a photo of {}.", smoke_or(1000, 20), 11),
                                            ("500 labels x simple_imagenet (7)", "simple_imagenet", smoke_or(500, 10),
                                             12)):
            labels = list(dict.fromkeys(make_texts(2 * count, seed=seed)))[:count]
            first = classify(svc.base, url, labels, template)
            repeats = [classify(svc.base, url, labels, template) for _ in range(REPEATS)]
            results[name] = {"labels": len(labels), "first_s": first, "repeat_median_s": statistics.median(repeats),
                             "repeat_max_s": max(repeats)}
            print(name, json.dumps(results[name]), flush=True)
    finally:
        svc.stop()
        photos.close()
    return results


def write(results: dict) -> None:
    lines = ["# /classify: one image against many labels, first call versus repeated calls", "",
             f"`python bench/zeroshot.py`, {time.strftime('%Y-%m-%d')}, fixed-seed random {MODEL}, 1 worker, "
             f"the vector cache off (`CLIP_CACHE_MB=0`), the label cache on (default); median of {REPEATS} "
             "repeats.", "",
             "| labels x templates | first call (s) | repeated call, median (s) | first / repeated |",
             "| --- | --- | --- | --- |"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['first_s']:.2f} | {r['repeat_median_s']:.3f} | "
                     f"**{r['first_s'] / r['repeat_median_s']:.0f}x** |")
    results_file("zeroshot.md").write_text("\n".join(lines) + "\n")
    results_file("zeroshot.json").write_text(json.dumps(results, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    write(run())
