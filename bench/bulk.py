"""A backfill of N images three ways, side by side in one run: items/s and CPU seconds.

    python bench/bulk.py                  # 2,000 images; writes bench/results/bulk.md and bulk.json
    python bench/bulk.py --images 200     # a quick check

1. ``clip-service embed DIR -o out.parquet``: the model in-process (CLIP_* defaults).
2. ``clip-service embed DIR -o out.parquet --url ...`` against ``gunicorn wsgi:app`` (CLIP_* defaults).
3. A naive loop: ``requests.post(url + "/embed/image", files={"images": f})``, one image per request.

The images are made from the test photos (tests/fixtures) at several sizes and
crops, as JPEG and PNG, in nested folders. Gunicorn runs a fixed-seed random
ViT-B-32 checkpoint (the real architecture and cost; hub weights are out of
reach here). CPU is user + system seconds of every process involved: the
command's process, and Gunicorn's master and workers (from /proc) for the two
that use the service. The vectors of all three are compared at the end.
"""

from __future__ import annotations

import argparse
import json
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

from bench.harness import ROOT, Service, checkpoint  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
SOURCES = [FIXTURES / "chelsea_0.jpg", FIXTURES / "coffee_0.jpg", FIXTURES / "camera.png",
           FIXTURES / "large" / "chelsea_12mp.jpg"]
LONG_SIDES = (224, 320, 480, 640, 1024, 1600)
TICKS = os.sysconf("SC_CLK_TCK")


def make_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` distinct images: random crops of the photos, resized to one of LONG_SIDES, 1 in 5 as PNG."""
    rng = random.Random(seed)
    photos = [Image.open(p).convert("RGB") for p in SOURCES]
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        image = photo.crop((x, y, x + cw, y + ch))
        scale = rng.choice(LONG_SIDES) / max(image.size)
        # reducing_gap: a cheap integer downscale first, so cutting a 12 MP photo down stays quick.
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BICUBIC, reducing_gap=3.0)
        path = folder / f"{i // 100:03d}" / f"img-{i:05d}.{'png' if i % 5 == 4 else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=90) if path.suffix == ".jpg" else image.save(path, compress_level=6)
        paths.append(path)
    return paths


def service_cpu(service: Service) -> float:
    """User + system CPU seconds of Gunicorn so far: the master, its live workers, and the workers it recycled."""
    total = 0
    for pid in service.pids():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a worker that exited just now: the master's cutime/cstime hold it once it is reaped
        total += int(fields[11]) + int(fields[12])  # utime, stime (all threads)
        if pid == service.proc.pid:
            # Workers recycled after CLIP_MAX_REQUESTS take their CPU with them; the master reaps them.
            total += int(fields[13]) + int(fields[14])  # cutime, cstime
    return total / TICKS


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_command(folder: Path, output: Path, env: dict, extra: list[str]) -> tuple[float, float, float]:
    """(wall s, command CPU s, items/s the command reports) of one ``clip-service embed``."""
    cpu_before, started = children_cpu(), time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "clip_service.cli", "embed", str(folder), "-o", str(output),
                           *extra], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    summary = done.stderr.strip().splitlines()[-1]
    print("   ", summary, flush=True)
    rate = float(re.search(r"([\d.]+) items/s", summary).group(1))
    return wall, children_cpu() - cpu_before, rate


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
    parser.add_argument("--concurrency", type=int, default=4, help="the command's --concurrency (default 4)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results",
                        help="where bulk.md and bulk.json go ('' for nowhere)")
    args = parser.parse_args()

    load = os.getloadavg()
    weights = checkpoint()
    model_env = {"CLIP_MODEL": "ViT-B-32", "CLIP_PRETRAINED": str(weights), "HF_HUB_OFFLINE": "1"}
    rows = []
    with tempfile.TemporaryDirectory(prefix="clip-bulk-bench-") as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        paths = make_images(tmp / "images", args.images)
        print(f"made {len(paths)} images in {time.perf_counter() - started:.1f} s "
              f"({sum(p.stat().st_size for p in paths) / 2**20:.0f} MiB)", flush=True)

        print("1. clip-service embed, model in-process", flush=True)
        wall, cpu, rate = run_command(tmp / "images", tmp / "in-process.parquet", model_env,
                                      ["--concurrency", str(args.concurrency)])
        rows.append({"method": "clip-service embed, model in-process", "wall_s": wall, "items_per_s": rate,
                     "items_per_s_wall": args.images / wall, "cpu_client_s": cpu, "cpu_server_s": 0.0})

        service = Service({})
        try:
            print(f"   gunicorn healthy after {service.startup_seconds:.1f} s", flush=True)
            print(f"2. clip-service embed --url (gunicorn, --concurrency {args.concurrency})", flush=True)
            server_before = service_cpu(service)
            wall, cpu, rate = run_command(tmp / "images", tmp / "remote.parquet", {},
                                          ["--url", service.base, "--concurrency", str(args.concurrency)])
            rows.append({"method": f"clip-service embed --url, --concurrency {args.concurrency}", "wall_s": wall,
                         "items_per_s": rate, "items_per_s_wall": args.images / wall, "cpu_client_s": cpu,
                         "cpu_server_s": service_cpu(service) - server_before})

            print("3. naive loop: one image per POST", flush=True)
            server_before = service_cpu(service)
            wall, cpu, naive = naive_loop(service.base, paths)
            rows.append({"method": "naive loop, one image per request", "wall_s": wall,
                         "items_per_s": args.images / wall, "items_per_s_wall": args.images / wall,
                         "cpu_client_s": cpu, "cpu_server_s": service_cpu(service) - server_before})
        finally:
            service.stop()

        local = read_vectors(tmp / "in-process.parquet", tmp / "images")
        remote = read_vectors(tmp / "remote.parquet", tmp / "images")
        keys = sorted(naive)
        assert len(local) == len(remote) == len(naive) == args.images, "an image failed"
        agreement = {
            "in-process vs --url": float(max(np.abs(local[k] - remote[k]).max() for k in keys)),
            "--url vs naive": float(max(np.abs(remote[k] - naive[k]).max() for k in keys)),
        }

    naive_rate = rows[-1]["items_per_s_wall"]
    for row in rows:
        row["cpu_total_s"] = row["cpu_client_s"] + row["cpu_server_s"]
        row["cpu_ms_per_item"] = 1000 * row["cpu_total_s"] / args.images
        row["vs_naive"] = row["items_per_s_wall"] / naive_rate
    table = ["| method | items/s (run) | items/s (wall, start-up included) | vs naive | CPU s: command | "
             "CPU s: gunicorn | CPU ms per item |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    table += [f"| {r['method']} | {r['items_per_s']:.1f} | {r['items_per_s_wall']:.1f} | {r['vs_naive']:.2f}x | "
              f"{r['cpu_client_s']:.1f} | {r['cpu_server_s']:.1f} | {r['cpu_ms_per_item']:.0f} |" for r in rows]
    note = (f"{args.images} images (sides {min(LONG_SIDES)}-{max(LONG_SIDES)} px, JPEG and PNG), random ViT-B-32, "
            f"CLIP_* defaults, {os.cpu_count()} cores, 1-minute load average {load[0]:.1f} at the start and "
            f"{os.getloadavg()[0]:.1f} at the end (other jobs share this machine); largest difference between "
            "the vectors: " + ", ".join(f"{k} {v:.1e}" for k, v in agreement.items()))
    print("\n" + "\n".join(table) + "\n\n" + note)
    if str(args.results):
        args.results.mkdir(parents=True, exist_ok=True)
        suffix = "" if args.images == 2000 else f"-{args.images}"
        (args.results / f"bulk{suffix}.md").write_text("\n".join(table) + "\n\n" + note + "\n")
        (args.results / f"bulk{suffix}.json").write_text(json.dumps(
            {"images": args.images, "cores": os.cpu_count(), "rows": rows, "agreement": agreement}, indent=2) + "\n")


if __name__ == "__main__":
    main()
