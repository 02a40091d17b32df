"""What each model family costs on this machine, side by side in one run: speed, memory, cold start.

    python bench/families.py                       # writes bench/results/families.md and .json
    python bench/families.py --families RN50 MobileCLIP2-S0

For each family, ``gunicorn wsgi:app`` with the service's defaults (1 worker, 8
threads, 2 runners) on a fixed-seed random checkpoint of the full architecture
(speed and memory do not depend on the weights' values) and CLIP_PRECISION=fp32
(open_clip's arithmetic, so the families compare as open_clip computes them):

- images/s and texts/s for one request of 16 (the best of 2 after a warm-up),
  and for single-item requests from 8 clients at once; and the service's CPU
  time per item in the requests of 16, which depends little on what else the
  machine runs (on 2 idle cores, about 2000 / ms items/s at most);
- the cold start (spawn to the first 200 from /health/ready) and the master's
  peak RSS while loading (VmHWM), and the whole service's PSS once warm.

Images are 16 JPEGs of ../shared/images served from 127.0.0.1 (fetch and decode
included); texts are 5-20 random words. SigLIP's texts use a small tokenizer
made with the tokenizers package (tests/support/hub_tokenizers.py): SigLIP pads
every text to 64 tokens, so its text cost does not depend on the vocabulary.
The families run one after another; the figures are as good as the machine was
quiet (its load average is in the table).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import orjson
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (  # noqa: E402
    CACHE,
    PHOTOS,
    checkpoint,
    make_texts,
    photo_server,
    results_file,
    run_load,
    smoke_or,
)
from tests.support.gunicorn import GunicornProcess  # noqa: E402

# The families of docs/model.md#families at the sizes users pick (MobileCLIP2-S2 beside S0).
FAMILIES = ["ViT-B-32-quickgelu", "ViT-L-14", "RN50", "convnext_base", "ViT-B-16-SigLIP", "ViT-B-16-SigLIP2",
            "MobileCLIP2-S0", "MobileCLIP2-S2"]
TEXTS = make_texts(256)
IMAGE_FILES = ([f"/photo640/{p.name}" for p in sorted((PHOTOS / "photo640").iterdir())]
               + ["/orig/rocket.jpg", "/orig/retina.jpg"])[:16]


def tokenizer_dir(model_name: str) -> str:
    """A tokenizer folder for a model whose tokenizer is a Hugging Face one (SigLIP's), else ''."""
    import open_clip

    text = (open_clip.get_model_config(model_name) or {}).get("text_cfg", {})
    if not text.get("hf_tokenizer_name"):
        return ""
    from tests.support.hub_tokenizers import write_hub_tokenizer

    kind = "gemma" if "siglip2" in model_name.lower() else "t5"
    folder = CACHE / f"tokenizer-{kind}"
    if not (folder / "tokenizer.json").is_file():
        write_hub_tokenizer(folder, kind)
    return str(folder)


def post(session, url: str, body: dict) -> bool:
    response = session.post(url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}, timeout=300)
    return response.status_code == 200 and not response.json().get("errors")


def one_request_per_s(service: GunicornProcess, path: str, body: dict, items: int, rounds: int = 2) -> tuple:
    """(items/s of the best round, the service's CPU ms per item over the rounds) for one request of ``items``.

    CPU time per item hardly depends on what else the machine runs, where items/s does: on a
    shared machine it is the figure to compare families by (2 idle cores give about 2000 / ms items/s).
    """
    rounds = smoke_or(rounds, 1)
    with requests.Session() as session:
        assert post(session, service.base + path, body), f"{path} failed"  # the warm-up
        best = float("inf")
        cpu = service.cpu_seconds()
        for _ in range(rounds):
            started = time.perf_counter()
            assert post(session, service.base + path, body), f"{path} failed"
            best = min(best, time.perf_counter() - started)
        cpu = service.cpu_seconds() - cpu
    return items / best, 1000 * cpu / (items * rounds)


def measure(model_name: str, photo_port: int, urls: list[str]) -> dict:
    env = {"CLIP_MODEL": model_name, "CLIP_PRETRAINED": str(checkpoint(model_name)), "CLIP_PRECISION": "fp32",
           "LOG_LEVEL": "WARNING", "CLIP_FETCH_ALLOW": f"127.0.0.1:{photo_port}", "CLIP_CACHE_MB": "0",
           "CLIP_LABEL_CACHE_MB": "0", "CLIP_TOKENIZER": tokenizer_dir(model_name)}
    service = GunicornProcess(env, extra_args=("--access-logfile", "/dev/null"))
    try:
        cold = service.wait_healthy(timeout=600, path="/health/ready")
        base = service.base
        info = requests.get(base + "/v1/models", timeout=30).json()["data"][0]
        row = {"model": model_name, "dimensions": info["dimensions"], "scores": info.get("scores", ""),
               "cold_start_s": cold, "load_peak_rss_mib": service.peak_rss_mib()}
        row["images_per_s_batch16"], row["cpu_ms_per_image"] = one_request_per_s(
            service, "/embed/image", {"urls": urls}, len(urls))
        row["texts_per_s_batch16"], row["cpu_ms_per_text"] = one_request_per_s(
            service, "/embed/text", {"texts": TEXTS[:16]}, 16)
        singles = iter(range(10**9))
        row["images_per_s_8_clients"] = run_load(
            lambda s: post(s, base + "/embed/image", {"urls": [urls[next(singles) % len(urls)]]}),
            clients=8, requests_total=24, items_per_request=1, max_seconds=60)["items_per_s"]
        row["texts_per_s_8_clients"] = run_load(
            lambda s: post(s, base + "/embed/text", {"texts": [TEXTS[16 + next(singles) % 200]]}),
            clients=8, requests_total=64, items_per_request=1, max_seconds=60)["items_per_s"]
        row["warm_pss_mib"] = service.pss_mib()
        return row
    finally:
        service.stop()


def table(rows: list[dict], cpu: str, load: str) -> str:
    lines = [f"CPU: {cpu}; {os.cpu_count()} cores; load average before the run: {load}. fp32, 1 worker x 8 "
             "threads, 2 runners; fixed-seed random weights of the full architectures.", "",
             "| Model | d | scores | CPU ms per image | images/s, 1 request of 16 | images/s, 8 clients x 1 | "
             "CPU ms per text | texts/s, 1 request of 16 | texts/s, 8 clients x 1 | cold start (s) | "
             "peak RSS loading (MiB) | PSS warm (MiB) |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| `{r['model']}` | | | failed: {r['error']} | | | | | | | | |")
            continue
        lines.append(f"| `{r['model']}` | {r['dimensions']} | {r['scores']} | {r['cpu_ms_per_image']:.0f} | "
                     f"{r['images_per_s_batch16']:.1f} | {r['images_per_s_8_clients']:.1f} | "
                     f"{r['cpu_ms_per_text']:.1f} | {r['texts_per_s_batch16']:.0f} | "
                     f"{r['texts_per_s_8_clients']:.0f} | {r['cold_start_s']:.1f} | {r['load_peak_rss_mib']:.0f} | "
                     f"{r['warm_pss_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=smoke_or(FAMILIES, ["ViT-S-32-alt"]))
    args = parser.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    for name in args.families:  # every checkpoint first: writing one is not part of any family's figures
        checkpoint(name)
    rows = []
    photos = photo_server()
    try:
        urls = [photos.url(f) for f in IMAGE_FILES]
        for name in args.families:
            try:
                rows.append(measure(name, photos.port, urls))
            except Exception as exc:  # one family's failure is a row, not the end of the run
                rows.append({"model": name, "error": " ".join(str(exc).split())[:200]})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        photos.close()
    text = table(rows, cpu, load)
    results_file("families.md").write_text(text)
    results_file("families.json").write_text(json.dumps({"cpu": cpu, "load": load, "rows": rows}, indent=2))
    print(text)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
