"""A backfill of N images by URL four ways, side by side in one run: items/s and CPU per item, Ray's overhead.

    python bench/ray_bulk.py                  # 2,000 images; writes bench/results/ray_bulk.md and .json
    python bench/ray_bulk.py --images 200     # a quick check

1. ``clip-service embed urls.txt -o out.parquet``: the model in-process (2 runners x 1 torch thread).
2. ``... --ray ADDRESS``, 1 actor (2 runners x 1 thread: 2 CPUs), ``--concurrency 4``.
3. ``... --ray ADDRESS --actors 2`` (each 1 runner x 1 thread: 1 CPU), ``--concurrency 2`` each.
4. ``... --url`` against ``gunicorn wsgi:app`` (1 worker, 2 runners), ``--concurrency 4``.

All four read the same images (bench/bulk.py's generator: crops of the test photos at 224-1600 px,
JPEG and PNG) from a loopback image server (tests/support) that CLIP_FETCH_ALLOW admits, with the
vector cache off, fp32, and every other CLIP_* setting at its default, on the benchmark's random ViT-B-32.
The Ray runs go to one local Ray (``ray.init(num_cpus=<cores>)``) started here in its own session,
so its processes' CPU (GCS, raylet, workers, and the workers they reaped) is read from /proc; the
command's own CPU is its rusage; Gunicorn's is its processes'. The set is cut into ``--rounds``
slices; each round runs the four ways on one slice in a rotating order, so a change in the load of
this shared machine falls on all alike. Every run writes a part file every batch (``--flush-rows
64``): its steady rate is the rows of the middle half of its parts over the time they took, so no
start-up (the model's load; for Ray, its probe task, the actors' start and load) and no tail is in
it. Start-up CPU is measured once per way, on one image, and taken out of CPU per item.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bulk import LONG_SIDES, make_images  # noqa: E402
from bench.harness import MODEL, RESULTS, ROOT, checkpoint, smoke_or, start_service, write_table  # noqa: E402
from tests.support.image_server import ImageServer  # noqa: E402

CLOCK = os.sysconf("SC_CLK_TCK")
# The Ray head, in a session of its own: prints its address, then lives until its stdin closes.
HEAD = """
import ray, sys
ray.init(num_cpus=int(sys.argv[1]), include_dashboard=False, logging_level="WARNING")
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
ray.shutdown()
"""
WAYS = {
    "local": ("clip-service embed, model in-process (2 runners)", ["--concurrency", "4"], {}),
    "ray1": ("clip-service embed --ray, 1 actor (2 runners, 2 CPUs)", ["--actors", "1", "--concurrency", "4"], {}),
    "ray2": ("clip-service embed --ray, 2 actors (1 runner, 1 CPU each)", ["--actors", "2", "--concurrency", "2"],
             {"CLIP_BATCH_RUNNERS": "1"}),
    "url": ("clip-service embed --url (Gunicorn, 1 worker, 2 runners)", ["--concurrency", "4"], {}),
}


def session_cpu(sid: int) -> dict[int, float]:
    """CPU seconds of each process in session ``sid`` (with the children it has reaped), by pid."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # state, ppid, pgrp, session, ...
            found[int(stat.parent.name)] = sum(int(value) for value in fields[11:15]) / CLOCK  # u, s, cu, cs time
    return found


class SessionCpu:
    """CPU seconds a session's processes spend between ``begin()`` and ``end()``, those that exit included.

    Ray's raylet ignores SIGCHLD, so a worker it kills takes its CPU time with it (no cutime): every
    process is read every ``every`` seconds and counted at its last reading. A job's workers are idle
    once their last batch is back, so little is missed."""

    def __init__(self, sid: int, every: float = 0.25):
        self.sid, self.every = sid, every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def begin(self) -> None:
        self.baseline = session_cpu(self.sid)
        self.last = dict(self.baseline)
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            self.last.update(session_cpu(self.sid))

    def end(self) -> float:
        self._stop.set()
        self._thread.join()
        self.last.update(session_cpu(self.sid))
        return sum(seconds - self.baseline.get(pid, 0.0) for pid, seconds in self.last.items())


class Counter:
    """``begin()`` and ``end()`` around a run, from a cumulative CPU reading (Gunicorn's master reaps its workers)."""

    def __init__(self, read=lambda: 0.0):
        self.read = read

    def begin(self) -> None:
        self.start = self.read()

    def end(self) -> float:
        return self.read() - self.start


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class RayHead:
    """A local Ray in its own session: ``address`` for ``--ray``; ``cpu`` counts all its processes."""

    def __init__(self, cpus: int, env: dict[str, str]):
        self.proc = subprocess.Popen([sys.executable, "-c", HEAD, str(cpus)], cwd=ROOT, env={**os.environ, **env},
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.address = self.proc.stdout.readline().strip()
        if not self.address:
            raise RuntimeError("the Ray head did not start")
        self.cpu = SessionCpu(self.proc.pid)

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(60)


def run_command(urls: Path, output: Path, env: dict, extra: list[str], elsewhere) -> dict:
    """One ``clip-service embed``: wall s, the seconds its summary reports, the steady span, CPU of each side."""
    elsewhere.begin()
    cpu_before, started = children_cpu(), time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "clip_service.cli", "embed", str(urls), "-o", str(output),
                           "--flush-rows", "64", *extra], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                          text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    summary = done.stderr.strip().splitlines()[-1]
    print("   ", summary, flush=True)
    failed = re.search(r" (\d+) failed", summary)
    if failed is None or failed.group(1) != "0":
        raise RuntimeError(f"an image failed: {summary}")
    reported = re.search(r"; ([\d.]+) s, [\d.]+ items/s", summary)
    other = elsewhere.end()
    steady_rows, steady_s = middle_half(output)
    return {"wall_s": wall, "run_s": float(reported.group(1)) if reported else 0.0, "steady_rows": steady_rows,
            "steady_s": steady_s, "cpu_command_s": children_cpu() - cpu_before, "cpu_other_s": other}


def middle_half(output: Path) -> tuple[int, float]:
    """(rows, seconds) of a run's middle half: from the part that takes it past 25 % of its rows to the one
    past 75 %. Batches run several at once, so the first part comes when others are well under way:
    counting from it would credit them to the steady state; the middle half has no start and no tail."""
    parts = [(part.stat().st_mtime, pq.read_metadata(part).num_rows) for part in sorted(output.glob("part-*"))]
    total = sum(rows for _, rows in parts)
    done, start, end = 0, None, None
    for mtime, rows in parts:
        done += rows
        if start is None and done >= total / 4:
            start = (mtime, done)
        elif start is not None and end is None and done >= 3 * total / 4:
            end = (mtime, done)
    if start is None or end is None:
        return 0, 0.0  # fewer than two parts in the middle: a set too small to say
    return end[1] - start[1], end[0] - start[0]


def url_list(folder: Path, base: str, paths: list[Path], name: str) -> Path:
    listing = folder / name
    listing.write_text("".join(f"{base}/{path.relative_to(folder / 'images').as_posix()}\n" for path in paths))
    return listing


def read_vectors(output: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(output, columns=["id", "vector"]).to_pylist()
    return {row["id"]: np.asarray(row["vector"], dtype=np.float32) for row in table if row["vector"] is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=smoke_or(2000, 8))
    parser.add_argument("--rounds", type=int, default=smoke_or(4, 1),
                        help="slices of the set; each round runs the four ways on one slice, in a rotating order")
    # A str, not a Path: Path('') is '.', so '' would write into the working directory.
    parser.add_argument("--results", default=str(RESULTS), help="where ray_bulk.md and .json go ('' for nowhere)")
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    cpu_name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), "unknown")
    load = os.getloadavg()
    totals = {way: {"wall_s": 0.0, "run_s": 0.0, "steady_rows": 0, "steady_s": 0.0, "cpu_command_s": 0.0,
                    "cpu_other_s": 0.0} for way in WAYS}
    startup: dict[str, dict] = {}
    vectors: dict[str, dict[str, np.ndarray]] = {way: {} for way in WAYS}
    with tempfile.TemporaryDirectory(prefix="clip-ray-bench-") as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        slices = make_images(tmp / "images", args.images, args.rounds)
        print(f"made {args.images} images in {time.perf_counter() - started:.1f} s", flush=True)
        with ImageServer(directory=tmp / "images") as photos:
            base = f"http://127.0.0.1:{photos.port}"
            # fp32 in every way, as the service harness.start_service starts and the recorded figures.
            env = {"CLIP_MODEL": MODEL, "CLIP_PRETRAINED": str(checkpoint()), "HF_HUB_OFFLINE": "1",
                   "CLIP_CACHE_MB": "0", "CLIP_PRECISION": "fp32",
                   "CLIP_FETCH_ALLOW": f"127.0.0.1:{photos.port}"}
            # Token authentication, as Ray turns it on for a new local Ray: a driver naming an address
            # must ask for it (the token is ~/.ray/auth_token, made by the head).
            ray_env = {"RAY_AUTH_MODE": "token"}
            head = RayHead(cores, {"HF_HUB_OFFLINE": "1", **ray_env})
            service = None
            try:
                service = start_service({"CLIP_CACHE_MB": "0"}, photo_port=photos.port)
                print(f"Ray at {head.address}; gunicorn healthy after {service.startup_seconds:.1f} s", flush=True)

                def command(way: str, urls: Path, output: Path) -> dict:
                    _, extra, way_env = WAYS[way]
                    target = {"local": [], "url": ["--url", service.base]}.get(way, ["--ray", head.address])
                    other = {"local": Counter(), "url": Counter(service.cpu_seconds)}.get(way, head.cpu)
                    extra_env = ray_env if way.startswith("ray") else {}
                    return run_command(urls, output, {**env, **extra_env, **way_env}, [*extra, *target], other)

                # Start-up alone: each way on one image (the first of the set, fetched again later).
                one = url_list(tmp, base, slices[0][:1], "one.txt")
                for way in WAYS:
                    print(f"start-up alone, one image: {WAYS[way][0]}", flush=True)
                    startup[way] = command(way, one, tmp / f"startup-{way}.parquet")
                for round_ in range(args.rounds):
                    urls = url_list(tmp, base, slices[round_], f"round-{round_}.txt")
                    order = list(WAYS)[round_ % len(WAYS):] + list(WAYS)[:round_ % len(WAYS)]
                    for way in order:
                        print(f"round {round_ + 1}/{args.rounds}, {len(slices[round_])} images: {WAYS[way][0]}",
                              flush=True)
                        output = tmp / f"{way}-{round_}.parquet"
                        for key, value in command(way, urls, output).items():
                            totals[way][key] += value
                        vectors[way].update(read_vectors(output))
            finally:
                if service is not None:
                    service.stop()
                head.stop()

    assert all(len(found) == args.images for found in vectors.values()), "an image is missing"
    keys = sorted(vectors["local"])
    agreement = {f"local vs {way}": float(max(np.abs(vectors["local"][k] - vectors[way][k]).max() for k in keys))
                 for way in ("ray1", "ray2", "url")}
    rows = []
    for way, total in totals.items():
        # Each run pays its start-up once: taken out of CPU per item.
        fixed_cpu = args.rounds * (startup[way]["cpu_command_s"] + startup[way]["cpu_other_s"])
        cpu = total["cpu_command_s"] + total["cpu_other_s"]
        rows.append({"way": way, "method": WAYS[way][0], **total, "startup": startup[way],
                     "items_per_s_reported": args.images / total["run_s"],
                     "items_per_s_wall": args.images / total["wall_s"],
                     # 0 when no run wrote two parts (a set of a batch or two per round: use more images)
                     "items_per_s_steady": total["steady_rows"] / total["steady_s"] if total["steady_s"] else 0.0,
                     "cpu_ms_per_item": 1000 * (cpu - fixed_cpu) / args.images,
                     "cpu_ms_per_item_with_startup": 1000 * cpu / args.images})
    local = rows[0]
    for row in rows:
        row["cpu_per_item_vs_local"] = row["cpu_ms_per_item"] / local["cpu_ms_per_item"]
        row["steady_rate_vs_local"] = row["items_per_s_steady"] / max(1e-9, local["items_per_s_steady"])
    table = ["| method | items/s, steady | vs in-process | items/s, start-ups included | CPU ms per item "
             "| vs in-process | CPU s: command | CPU s: Ray or Gunicorn | start-up alone (one image): wall s, CPU s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    table += [f"| {r['method']} | {r['items_per_s_steady']:.1f} | {r['steady_rate_vs_local']:.2f}x | "
              f"{r['items_per_s_wall']:.1f} | {r['cpu_ms_per_item']:.0f} | {r['cpu_per_item_vs_local']:.2f}x | "
              f"{r['cpu_command_s']:.1f} | {r['cpu_other_s']:.1f} | {r['startup']['wall_s']:.1f}, "
              f"{r['startup']['cpu_command_s'] + r['startup']['cpu_other_s']:.1f} |" for r in rows]
    note = (f"{args.images} images by URL from a loopback image server (sides {min(LONG_SIDES)}-{max(LONG_SIDES)} px, "
            f"JPEG and PNG) in {args.rounds} rounds, each running the four ways on one slice in a rotating order; "
            f"random {MODEL} in fp32, CLIP_* defaults but the vector cache off; {cores} cores ({cpu_name}), one local "
            f"Ray (num_cpus={cores}) for the --ray runs. items/s, steady: the rows of the middle half of each run's "
            "part files (a part per batch of 64) over the time they took: no start-up and no tail in it. "
            "CPU ms per item: every process of the way (the command; Ray's GCS, raylet and workers; "
            "Gunicorn's master and worker), start-ups taken out. 1-minute load average "
            f"{load[0]:.1f} at the start and {os.getloadavg()[0]:.1f} at the end (other jobs share this machine). "
            "Largest difference between the vectors: " + ", ".join(f"{k} {v:.1e}" for k, v in agreement.items()))
    print("\n" + "\n".join(table) + "\n\n" + note)
    if args.results:
        suffix = "" if args.images == 2000 else f"-{args.images}"
        write_table(args.results, f"ray_bulk{suffix}", table, note,
                    {"images": args.images, "rounds": args.rounds, "cores": cores, "cpu": cpu_name, "model": MODEL,
                     "load_average": [load[0], os.getloadavg()[0]], "rows": rows, "agreement": agreement})


if __name__ == "__main__":
    main()
