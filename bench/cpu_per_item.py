"""The service's CPU time per item against the model's own, and its throughput against the seed and Infinity.

    python bench/cpu_per_item.py [--rounds 3] [--seconds 15] [--infinity /tmp/infinity-venv]
    python bench/cpu_per_item.py --alone          # this checkout only (default and fp32), no seed worktree

Issue #28 item 3. Side by side in one run, in a rotating order for ``--rounds`` rounds (each figure is the
median round), on one machine, one fixed-seed random ViT-B-32 and the same photos and texts:
  - "default": this checkout as it starts with no CLIP_PRECISION (auto: bf16 on a CPU with native bf16);
  - "fp32": this checkout with CLIP_PRECISION=fp32;
  - "seed": the first version of the service (commit f558a89), from a temporary worktree;
  - "infinity": Infinity 0.0.78 (``--infinity VENV``, bench/infinity_peer.py), torch engine, bf16, on the same
    CPU; left out without the flag;
each under the five scenarios of bench/lone_request.py, run for ``--seconds`` each: single 640 px photos from
8 clients, 16-URL requests from 2, text batches of 32 from 2, single texts from 8, and 4 photos of 12 MP
from 1. For each: items/s, and the server's CPU seconds (every thread of every process of the service, from
/proc) per item served. For this checkout's services, also the mean batch the batcher formed (its metrics).

Then the model alone, in this process: the service's own forward passes (prepacked, in each precision) at the
batch sizes the services formed, 2 threads of 1 torch thread each (as the 2 batch runners), random 224 px
images and the benchmark's texts: its CPU ms per item and items/s are the floor of the service's CPU per item
and the ceiling of its throughput on these cores.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import infinity_peer  # noqa: E402
from bench.harness import (  # noqa: E402
    CACHE,
    MODEL,
    ROOT,
    checkpoint,
    photo_server,
    results_file,
    run_load,
    smoke_or,
    start_service,
)
from bench.lone_request import SMALL, TEXTS, large_photos, load_scenarios, worktree  # noqa: E402

SEED = "f558a89"
# Scenario -> the modality its forward passes run (the batch sizes come from that modality's metrics).
SCENARIOS = {"single image, 8 clients": "image", "image batch 16 URLs, 2 clients": "image",
             "text batch 32, 2 clients": "text", "single text, 8 clients": "text",
             "4 x 12 MP per request, 1 client": "image"}
# The throughput goals: this many times the seed's items/s.
GOALS = {"single image, 8 clients": 7, "image batch 16 URLs, 2 clients": 3.8, "text batch 32, 2 clients": 18,
         "single text, 8 clients": 7, "4 x 12 MP per request, 1 client": 7}
# ... and the service's CPU per item at most this many times the model's own (at the batch it forms).
CPU_GOALS = {"single image, 8 clients": 1.2, "image batch 16 URLs, 2 clients": 1.2, "text batch 32, 2 clients": 1.05}


def cpu_name() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    native = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    return f"{name} ({', '.join(native) if native else 'no native bf16'})"


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def batch_metrics(base: str) -> dict[str, tuple[float, float]]:
    """modality -> (items, forward passes) so far, from the service's /metrics."""
    sums: dict[str, list[float]] = {}
    for line in requests.get(base + "/metrics", timeout=30).text.splitlines():
        for field, slot in (("clip_batch_size_sum", 0), ("clip_batch_size_count", 1)):
            if line.startswith(field + "{"):
                modality = line.split('modality="', 1)[1].split('"', 1)[0]
                sums.setdefault(modality, [0.0, 0.0])[slot] += float(line.split()[-1])
    return {m: (v[0], v[1]) for m, v in sums.items()}


def infinity_scenarios(base: str, small: list[str], large: list[str], rng: random.Random) -> dict:
    """The same scenarios through Infinity's /embeddings (images by URL)."""
    post = infinity_peer.post
    return {
        "single image, 8 clients": (lambda s: post(s, base, [rng.choice(small)], "image"), 8, 96, 1),
        "text batch 32, 2 clients": (lambda s: post(s, base, rng.sample(TEXTS, 32), "text"), 2, 40, 32),
        "single text, 8 clients": (lambda s: post(s, base, [rng.choice(TEXTS)], "text"), 8, 480, 1),
        "image batch 16 URLs, 2 clients": (lambda s: post(s, base, small[:16], "image"), 2, 20, 16),
        "4 x 12 MP per request, 1 client": (lambda s: post(s, base, large, "image"), 1, 12, 4),
    }


def measure(service, table: dict, seconds: float, ours: bool) -> dict:
    """Each scenario of ``table`` for ``seconds``: items/s, p50, CPU ms per item, and (ours) the mean batch."""
    out = {}
    for name, modality in SCENARIOS.items():
        send, clients, total, items = table[name]
        run_load(send, clients=clients, requests_total=max(clients, total // 8), items_per_request=items,
                 max_seconds=10)  # warm-up: the first passes of each shape, connections
        before = batch_metrics(service.base) if ours else {}
        cpu, load = service.cpu_seconds(), load_average()
        result = run_load(send, clients=clients, requests_total=10**6, items_per_request=items,
                          max_seconds=smoke_or(seconds, 2))
        result["cpu_ms_per_item"] = 1000 * (service.cpu_seconds() - cpu) / max(1, result["requests"] * items)
        result["load_before"] = load
        if ours:
            after = batch_metrics(service.base)
            items_run = after[modality][0] - before.get(modality, (0, 0))[0]
            passes = after[modality][1] - before.get(modality, (0, 0))[1]
            result["mean_batch"] = items_run / passes if passes else 0.0
        out[name] = result
        if result["failures"]:
            print(f"    {name}: {result['failures']} of {result['requests']} requests failed", flush=True)
        print(f"    {name}: {result['items_per_s']:.1f} items/s, {result['cpu_ms_per_item']:.2f} CPU ms/item"
              + (f", mean batch {result['mean_batch']:.2f}" if ours else "") + f" (load {load:.1f})", flush=True)
    return out


def model_alone(precision: str, batches: dict[str, float], seconds: float = 6.0) -> dict:
    """Per modality and batch size: CPU ms per item and items/s of 2 threads x 1 torch thread running passes."""
    import torch

    from clip_service.model.embedder import ClipEmbedder

    embedder = ClipEmbedder.load(MODEL, str(checkpoint()), "cpu", precision=precision)
    rng = random.Random(0)

    def inputs(modality: str, size: int):
        if modality == "image":
            return torch.randn(size, 3, 224, 224, generator=torch.Generator().manual_seed(size))
        tokens = embedder.tokenize(rng.sample(TEXTS, size))
        return tokens[torch.argsort((tokens != 0).sum(dim=-1), stable=True)]  # as embed_tokens sorts them

    def timed(modality: str, size: int) -> dict:
        encode = embedder._encode_pixels if modality == "image" else embedder._encode_tokens
        passes = [0, 0]
        stop = threading.Event()

        def run(slot: int):
            torch.set_num_threads(1)
            x = inputs(modality, size)
            with torch.inference_mode():
                encode(x)
                barrier.wait()
                while not stop.is_set():
                    encode(x)
                    passes[slot] += 1

        barrier = threading.Barrier(3)
        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        barrier.wait()
        cpu, wall = time.process_time(), time.perf_counter()
        time.sleep(smoke_or(seconds, 0.5))
        stop.set()
        for t in threads:
            t.join()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        items = sum(passes) * size
        return {"cpu_ms_per_item": 1000 * cpu / max(1, items), "items_per_s": items / wall}

    out: dict[str, dict] = {}
    for key, mean in batches.items():
        modality = SCENARIOS[key]
        lo, hi = max(1, math.floor(mean)), max(1, math.ceil(mean))
        points = {size: timed(modality, size) for size in sorted({lo, hi})}
        # A pass's time is about affine in its size, so the cost of batches averaging ``mean`` is the
        # pass time interpolated at ``mean``, divided by it.
        weight = (mean - lo) if hi > lo else 0.0
        pass_cpu = sum(points[s]["cpu_ms_per_item"] * s * w for s, w in ((lo, 1 - weight), (hi, weight)))
        pass_wall = sum(s / points[s]["items_per_s"] * w for s, w in ((lo, 1 - weight), (hi, weight)))
        out[key] = {"batch": mean, "cpu_ms_per_item": pass_cpu / mean, "items_per_s": mean / pass_wall,
                    "points": points}
        print(f"  model alone, {precision}, {key}: batch {mean:.2f}, {out[key]['cpu_ms_per_item']:.2f} CPU ms/item, "
              f"{out[key]['items_per_s']:.1f} items/s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15, help="measured seconds per scenario and service")
    parser.add_argument("--alone", action="store_true", help="this checkout only: no seed worktree")
    parser.add_argument("--infinity", type=Path, default=None, help="a venv with infinity-emb 0.0.78 installed")
    parser.add_argument("--infinity-batch", type=int, default=32, help="Infinity's --batch-size")
    args = parser.parse_args()
    checkpoint()
    labels = ["default", "fp32"] + ([] if args.alone else ["seed"])
    infinity_dir = None
    if args.infinity is not None:
        if (args.infinity / "bin" / "infinity_emb").exists():
            infinity_dir = infinity_peer.model_dir(args.infinity, CACHE / "infinity-clip-vit-b-32")
            labels.append("infinity")
        else:
            print(f"no infinity_emb in {args.infinity}: Infinity left out", flush=True)
    report: dict = {"cpu": cpu_name(), "model": MODEL, "seconds": args.seconds, "rounds": args.rounds,
                    "seed_commit": SEED,
                    "infinity_config": {"batch_size": args.infinity_batch} if infinity_dir else None}
    runs: dict[str, list[dict]] = {label: [] for label in labels}
    tree = None
    photos = photo_server()
    try:
        with tempfile.TemporaryDirectory(dir=photos.directory) as folder:
            large = [photos.url(f"/{Path(folder).name}/{n}") for n in large_photos(Path(folder))]
            small = [photos.url(f) for f in SMALL]
            for round_number in range(smoke_or(args.rounds, 1)):
                turn = round_number % len(labels)
                for label in labels[turn:] + labels[:turn]:
                    print(f"round {round_number + 1}, {label} (load {load_average():.1f})", flush=True)
                    if label == "infinity":
                        service = infinity_peer.InfinityServer(args.infinity, infinity_dir,
                                                               batch_size=args.infinity_batch)
                        try:
                            service.wait_healthy()
                            table = infinity_scenarios(service.base, small, large, random.Random(round_number))
                            runs[label].append(measure(service, table, args.seconds, ours=False))
                        finally:
                            service.stop()
                        continue
                    if label == "seed" and tree is None:
                        tree = worktree(SEED)
                    env = {"CLIP_CACHE_MB": "0", "CLIP_PRECISION": "fp32" if label == "fp32" else "auto"}
                    service = start_service(env, photo_port=photos.port, cwd=tree if label == "seed" else None)
                    try:
                        if label == "default":
                            report["default_precision"] = requests.get(service.base + "/v1/models",
                                                                       timeout=30).json()["data"][0]["precision"]
                        table = load_scenarios(service.base, small, large, random.Random(round_number))
                        runs[label].append(measure(service, table, args.seconds, ours=label != "seed"))
                    finally:
                        service.stop()
    finally:
        photos.close()
        if tree is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    for label, results in runs.items():
        middle = (len(results) - 1) // 2  # the median round (the lower middle one of an even count)
        report[label] = {name: sorted((r[name] for r in results), key=lambda r: r["items_per_s"])[middle]
                         for name in SCENARIOS}
        report[label + " rounds"] = {name: [round(r[name]["items_per_s"], 2) for r in results] for name in SCENARIOS}
    precisions = {"default": report.get("default_precision", "bf16"), "fp32": "fp32"}
    for label, precision in precisions.items():
        batches = {name: statistics.median(r[name]["mean_batch"] for r in runs[label]) for name in SCENARIOS}
        report[f"model alone, {label}"] = model_alone(precision, batches)
    results_file("cpu_per_item.json").write_text(json.dumps(report, indent=2))
    results_file("cpu_per_item.md").write_text(render(report))
    print(render(report))


def render(report: dict) -> str:
    default, fp32, seed, peer = (report.get(k, {}) for k in ("default", "fp32", "seed", "infinity"))
    alone, alone32 = report["model alone, default"], report["model alone, fp32"]
    precision = report.get("default_precision", "?")
    ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "-"  # noqa: E731
    lines = ["# CPU per item and throughput, side by side in one run (`python bench/cpu_per_item.py`)", "",
             f"{time.strftime('%Y-%m-%d')}, CPU: {report['cpu']}, 2 vCPU shared with the load generator; fixed-seed "
             f"random {report['model']}; vector cache off; {report['seconds']:.0f} s per scenario, median of "
             f"{report['rounds']} rounds, the services in a rotating order. default = this checkout with "
             f"CLIP_PRECISION=auto, the default (it ran {precision}); seed = {report['seed_commit']}"
             + (f"; Infinity 0.0.78, torch engine, --dtype bfloat16, --batch-size "
                f"{report['infinity_config']['batch_size']}" if report.get("infinity_config") else "; Infinity not run")
             + ".", "",
             "## Throughput (items/s)", "",
             "| scenario | seed | fp32 | default | Infinity | default / seed | goal | default / Infinity "
             "| model alone, default's batches | goal x seed / model alone |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in SCENARIOS:
        d, f, s, i = (x.get(name, {}).get("items_per_s") for x in (default, fp32, seed, peer))
        limit = alone[name]["items_per_s"]
        lines.append(f"| {name} | {s or 0:.1f} | {f:.1f} | {d:.1f} | {i or 0:.1f} | {ratio(d, s)} | {GOALS[name]}x "
                     f"| {ratio(d, i)} | {limit:.1f} | {ratio(GOALS[name] * s, limit) if s else '-'} |")
    lines += ["", "## CPU ms per item (the server's, from /proc) against the model's own", "",
              "| scenario | seed | fp32 | default | Infinity | default's mean batch | model alone at it "
              "| default / model | goal | fp32's mean batch | fp32 model alone | fp32 / model |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in SCENARIOS:
        d, f, s, i = (x.get(name, {}).get("cpu_ms_per_item") for x in (default, fp32, seed, peer))
        m, m32 = alone[name], alone32[name]
        lines.append(f"| {name} | {s or 0:.2f} | {f:.2f} | {d:.2f} | {i or 0:.2f} | {m['batch']:.2f} "
                     f"| {m['cpu_ms_per_item']:.2f} | {ratio(d, m['cpu_ms_per_item'])} | "
                     f"{str(CPU_GOALS[name]) + 'x' if name in CPU_GOALS else '-'} | {m32['batch']:.2f} "
                     f"| {m32['cpu_ms_per_item']:.2f} | {ratio(f, m32['cpu_ms_per_item'])} |")
    lines += ["", "The model alone: the service's forward passes (prepacked, in the service's precision) at the mean "
                  "batch the service formed in that scenario, 2 threads x 1 torch thread, no HTTP, decoding or "
                  "batching; its items/s is the most these 2 cores can serve at that batch size."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
