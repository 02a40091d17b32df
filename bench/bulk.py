"""A backfill of N images three ways, side by side in one run: items/s and CPU seconds.

    python bench/bulk.py                  # 2,000 images; writes bench/results/bulk.md and bulk.json
    python bench/bulk.py --images 200     # a quick check

1. ``clip-service embed DIR -o out.parquet``: the model in-process (CLIP_* defaults).
2. ``clip-service embed DIR -o out.parquet --url ...`` against ``gunicorn wsgi:app`` (CLIP_* defaults).
3. A naive loop: ``requests.post(url + "/embed/image", files={"images": f})``, one image per request.

The images are made from the test photos (tests/fixtures) at several sizes and
crops, as JPEG and PNG, in nested folders. Gunicorn runs a fixed-seed random
ViT-B-32 checkpoint (the real architecture and cost; hub weights are out of
reach here). The set is cut into ``--rounds`` slices and each round runs the
three ways on its slice in a rotating order, so a change in the machine's load
(it is shared) falls on all three alike. CPU is user + system seconds of every
process involved: the command's process, and Gunicorn's master, workers and
recycled workers (from /proc) for the two that use the service. The vectors of
all three are compared at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import MODEL, RESULTS, ROOT, checkpoint, start_service, write_table  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
SOURCES = [FIXTURES / "chelsea_0.jpg", FIXTURES / "coffee_0.jpg", FIXTURES / "camera.png",
           FIXTURES / "large" / "chelsea_12mp.jpg"]
LONG_SIDES = (224, 320, 480, 640, 1024, 1600)


def make_images(folder: Path, count: int, slices: int, seed: int = 0) -> list[list[Path]]:
    """``count`` distinct images in ``slices`` folders: random crops of the photos at one of LONG_SIDES, 1 in 5 PNG."""
    rng = random.Random(seed)
    photos = []
    for source in SOURCES:
        photo = Image.open(source).convert("RGB")
        photo.thumbnail((2700, 2700))  # a 60 % crop of it still covers the largest side made
        photos.append(photo)
    made: list[list[Path]] = [[] for _ in range(slices)]
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        image = photo.crop((x, y, x + cw, y + ch))
        scale = rng.choice(LONG_SIDES) / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BICUBIC)
        path = folder / str(i % slices) / f"{i // 100:03d}" / f"img-{i:05d}.{'png' if i % 5 == 4 else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=90) if path.suffix == ".jpg" else image.save(path, compress_level=6)
        made[i % slices].append(path)
    return made


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_command(folder: Path, output: Path, env: dict, extra: list[str]) -> tuple[float, float, float]:
    """(wall s, command CPU s, seconds the command reports for its items) of one ``clip-service embed``."""
    cpu_before, started = children_cpu(), time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "clip_service.cli", "embed", str(folder), "-o", str(output),
                           *extra], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    summary = done.stderr.strip().splitlines()[-1]
    print("   ", summary, flush=True)
    elapsed = re.search(r"; ([\d.]+) s, [\d.]+ items/s", summary)
    return wall, children_cpu() - cpu_before, float(elapsed.group(1)) if elapsed else 0.0


def naive_loop(base: str, paths: list[Path]) -> tuple[float, float, dict[str, np.ndarray]]:
    """One POST per image, one after another, a new connection each time (requests.post): (wall, CPU, vectors)."""
    vectors = {}
    cpu_before, started = self_cpu(), time.perf_counter()
    for path in paths:
        with open(path, "rb") as f:
            response = requests.post(base + "/embed/image", files={"images": (path.name, f)}, timeout=120)
        response.raise_for_status()
        vectors[path.as_posix()] = np.asarray(response.json()["embeddings"][0], dtype=np.float32)
    return time.perf_counter() - started, self_cpu() - cpu_before, vectors


def read_vectors(output: Path, folder: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(output, columns=["id", "vector"]).to_pylist()
    return {(folder / row["id"]).as_posix(): np.asarray(row["vector"], dtype=np.float32) for row in table
            if row["vector"] is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=4,
                        help="slices of the set; each round runs the three ways on one slice, in a rotating order, "
                             "so a change in the machine's load falls on all three (default 4)")
    parser.add_argument("--concurrency", type=int, default=4, help="the command's --concurrency (default 4)")
    # A str, not a Path: Path('') is '.', so '' would write into the working directory.
    parser.add_argument("--results", default=str(RESULTS), help="where bulk.md and bulk.json go ('' for nowhere)")
    args = parser.parse_args()

    load = os.getloadavg()
    # The vector cache off: every way embeds each slice of the same images, so a cache would turn
    # whichever came second into lookups.
    model_env = {"CLIP_MODEL": MODEL, "CLIP_PRETRAINED": str(checkpoint()), "HF_HUB_OFFLINE": "1",
                 "CLIP_CACHE_MB": "0"}
    names = {"local": "clip-service embed, model in-process",
             "url": f"clip-service embed --url (Gunicorn), --concurrency {args.concurrency}",
             "naive": "naive loop: requests.post, one image per request"}
    totals = {key: {"wall_s": 0.0, "run_s": 0.0, "cpu_client_s": 0.0, "cpu_server_s": 0.0} for key in names}
    vectors: dict[str, dict[str, np.ndarray]] = {key: {} for key in names}
    with tempfile.TemporaryDirectory(prefix="clip-bulk-bench-") as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        slices = make_images(tmp / "images", args.images, args.rounds)
        print(f"made {args.images} images in {time.perf_counter() - started:.1f} s "
              f"({sum(p.stat().st_size for s in slices for p in s) / 2**20:.0f} MiB)", flush=True)
        (tmp / "empty").mkdir()
        print("start-up alone: clip-service embed on an empty folder (loads the model)", flush=True)
        startup_wall, startup_cpu, _ = run_command(tmp / "empty", tmp / "empty.parquet", model_env, [])

        service = start_service({"CLIP_CACHE_MB": "0"})
        print(f"gunicorn healthy after {service.startup_seconds:.1f} s", flush=True)
        try:
            for round_ in range(args.rounds):
                folder, paths = tmp / "images" / str(round_), slices[round_]
                order = list(names)[round_ % 3:] + list(names)[:round_ % 3]
                for key in order:
                    print(f"round {round_ + 1}/{args.rounds}, {len(paths)} images: {names[key]}", flush=True)
                    server_before = service.cpu_seconds()
                    output = tmp / f"{key}-{round_}.parquet"
                    if key == "naive":
                        wall, cpu, found = naive_loop(service.base, paths)
                        run_s = wall
                    else:
                        extra = ["--concurrency", str(args.concurrency)]
                        wall, cpu, run_s = run_command(folder, output, model_env if key == "local" else {},
                                                       extra + (["--url", service.base] if key == "url" else []))
                        found = read_vectors(output, folder)
                    vectors[key].update(found)
                    row = totals[key]
                    row["wall_s"] += wall
                    row["run_s"] += run_s
                    row["cpu_client_s"] += cpu
                    row["cpu_server_s"] += service.cpu_seconds() - server_before
        finally:
            service.stop()

    assert all(len(found) == args.images for found in vectors.values()), "an image failed"
    keys = sorted(vectors["naive"])
    agreement = {f"{a} vs {b}": float(max(np.abs(vectors[a][k] - vectors[b][k]).max() for k in keys))
                 for a, b in (("local", "url"), ("url", "naive"))}
    rows = []
    naive_rate = args.images / totals["naive"]["wall_s"]
    for key, row in totals.items():
        # The in-process command loads the model once per round; that start-up is shown on its own row.
        startups = args.rounds if key == "local" else 0
        cpu = row["cpu_client_s"] + row["cpu_server_s"] - startups * startup_cpu
        rows.append({"method": names[key], **row, "items_per_s": args.images / row["run_s"],
                     "items_per_s_wall": args.images / row["wall_s"], "cpu_ms_per_item": 1000 * cpu / args.images,
                     "vs_naive": args.images / row["run_s"] / naive_rate})
    table = ["| method | items/s | vs naive | items/s, start-up included | CPU s: command | CPU s: Gunicorn | "
             "CPU ms per item |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    table += [f"| {r['method']} | {r['items_per_s']:.1f} | {r['vs_naive']:.2f}x | {r['items_per_s_wall']:.1f} | "
              f"{r['cpu_client_s']:.1f} | {r['cpu_server_s']:.1f} | {r['cpu_ms_per_item']:.0f} |" for r in rows]
    table.append(f"| start-up alone (model load, empty folder), per run | | | {startup_wall:.1f} s wall | "
                 f"{startup_cpu:.1f} | | |")
    note = (f"{args.images} images (sides {min(LONG_SIDES)}-{max(LONG_SIDES)} px, JPEG and PNG) in {args.rounds} "
            f"rounds, each running the three ways on one slice in a rotating order; random {MODEL}, "
            f"CLIP_* defaults but the vector cache off (1 worker, 2 runners x 1 torch thread), {os.cpu_count()} cores. items/s: the "
            "command's own count (model load excluded; Gunicorn was started before). CPU ms per item: command + "
            "Gunicorn, the in-process start-ups taken out. 1-minute load average "
            f"{load[0]:.1f} at the start and {os.getloadavg()[0]:.1f} at the end (other jobs share this machine). "
            "Largest difference between the vectors: " + ", ".join(f"{k} {v:.1e}" for k, v in agreement.items()))
    print("\n" + "\n".join(table) + "\n\n" + note)
    if args.results:
        suffix = "" if args.images == 2000 else f"-{args.images}"
        write_table(args.results, f"bulk{suffix}", table, note,
                    {"images": args.images, "rounds": args.rounds, "cores": os.cpu_count(), "rows": rows,
                     "startup": {"wall_s": startup_wall, "cpu_s": startup_cpu}, "agreement": agreement})


if __name__ == "__main__":
    main()
