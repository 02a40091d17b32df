"""Cold start side by side: a naive open_clip script against ``gunicorn wsgi:app``, same checkpoint.

    python bench/cold_start.py             # writes bench/results/cold_start.md and .json
    python bench/cold_start.py --runs 5 --baseline b086718
    python bench/cold_start.py --cold-file --out cold_start_cold_file   # the checkpoints read from disk

In each round, in turn (the order rotates from round to round):

- naive: a script that imports open_clip and calls
  ``create_model_and_transforms("ViT-B-32", pretrained=<the .pt checkpoint>)``,
  timed from spawn to the model returned;
- the service on the same .pt checkpoint, and on the same weights converted
  by ``python -m clip_service.model.convert``, timed from spawn to the first
  200 from /health/ready;
- the service as it was before the fast start (``--baseline``, a git ref of
  this repository, run from a ``git archive`` of it), on the .pt checkpoint.

Peak RSS while loading is VmHWM of the process that loads the model (the
naive script, or Gunicorn's master), file-backed pages of a mapped checkpoint
included. Then the PSS of master + workers with 1 and 4 workers after start.
The checkpoint is a fixed-seed random ViT-B-32 (bench/harness.py, BENCH_MODEL): the
real architecture and file size; hub weights are out of reach here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import CACHE, MODEL, ROOT, checkpoint, results_file, smoke_or  # noqa: E402
from tests.support.gunicorn import GunicornProcess, log_records, pss_kib  # noqa: E402

NAIVE = """
import json, sys, time
import open_clip
model, _, preprocess = open_clip.create_model_and_transforms(sys.argv[1], pretrained=sys.argv[2])
status = open("/proc/self/status").read()
print(json.dumps({"done": time.monotonic(), "hwm_kib": int(status.split("VmHWM:")[1].split()[0])}))
"""

IMPORTS = """
import json, sys, time
started = time.perf_counter()
import torch
times = {"torch": time.perf_counter() - started}
mark = time.perf_counter()
if sys.argv[1] == "full":
    import open_clip
else:
    import clip_service.model  # open_clip through lean_import.py
times["open_clip"] = time.perf_counter() - mark
mark = time.perf_counter()
import clip_service.app  # flask, flask-smorest, the web and ops layers
times["service modules"] = time.perf_counter() - mark
print(json.dumps(times))
"""


def converted_checkpoint() -> Path:
    """The benchmark checkpoint converted by the service's own command (cached)."""
    path = CACHE / f"{checkpoint().stem}.safetensors"
    if not path.exists():
        subprocess.run([sys.executable, "-m", "clip_service.model.convert", "--model", MODEL, str(checkpoint()),
                        str(path)], cwd=ROOT, check=True)
    return path


def baseline_tree(ref: str, into: Path) -> Path | None:
    """The service files of git ``ref`` in ``into``, or None when the ref is not in this clone."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "clip_service", "wsgi.py", "gunicorn.conf.py"],
                             capture_output=True)
    if archive.returncode != 0:
        print(f"  no baseline: {archive.stderr.decode().strip()}", flush=True)
        return None
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def evict(*paths: Path) -> None:
    """Drop the files' pages from the page cache (theirs only: nothing else on the machine is affected)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_naive(pt: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    spawned = time.monotonic()
    result = subprocess.run([sys.executable, "-c", NAIVE, MODEL, str(pt)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        raise RuntimeError(f"naive script failed: {result.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": report["done"] - spawned, "peak_rss_mib": report["hwm_kib"] / 1024, "cpu_seconds": cpu}


def start(tree: Path, weights: Path, log_path: Path, workers: int = 1) -> GunicornProcess:
    """``gunicorn wsgi:app`` from ``tree`` with ``weights``, logging at INFO (the stages come from its log)."""
    # fp32, as the recorded start-ups: bf16 (the default where the CPU has it) packs the weights differently.
    return GunicornProcess({"CLIP_MODEL": MODEL, "CLIP_PRETRAINED": str(weights), "CLIP_WORKERS": str(workers),
                            "LOG_LEVEL": "INFO", "CLIP_PRECISION": "fp32"}, log_path, cwd=tree)


def wait_ready(service: GunicornProcess) -> float:
    """Seconds from spawn to the first 200 from /health/ready (polled every 20 ms)."""
    return service.wait_healthy(timeout=180, path="/health/ready", poll=0.02)


def run_service(tree: Path, weights: Path, log_path: Path) -> dict:
    service = start(tree, weights, log_path)
    try:
        seconds = wait_ready(service)
        ready_wall = service.spawned_wall + seconds
        peak, cpu = service.peak_rss_mib(), service.cpu_seconds()
    finally:
        service.stop()
    return {"seconds": seconds, "peak_rss_mib": peak, "cpu_seconds": cpu,
            "stages": stages(log_path.read_text(errors="replace"), service.spawned_wall, ready_wall)}


def stages(log: str, spawned: float, ready: float) -> dict:
    """Where the seconds from spawn to ready went, from the log's timestamps."""
    records = log_records(log)

    def when(fragment: str) -> tuple[float, str] | None:
        for record in records:
            if fragment in record.get("message", ""):
                return datetime.fromisoformat(record["time"]).timestamp(), record["message"]
        return None

    loaded, booted, warmed = when("loaded model"), when("Booting worker"), when("warmed up")
    if not (loaded and booted and warmed):
        return {}
    message = loaded[1]
    load_seconds = float(re.search(r" in ([0-9.]+)s", message).group(1))
    out = {"python, imports, app factory": loaded[0] - load_seconds - spawned, "model load": load_seconds}
    if ";" in message:  # the fast loader names its stages
        for part in message.split(";", 1)[1].rstrip(")").split(","):
            name, value = part.strip().rsplit(" ", 1)
            out[f"  load: {name}"] = float(value.rstrip("s"))
    out["rest of app, gunicorn, fork"] = booted[0] - loaded[0]
    out["worker warm-up"] = warmed[0] - booted[0]
    out["first /health/ready"] = ready - warmed[0]
    return out


def import_times(runs: int) -> dict:
    out = {}
    for kind in ("full", "lean"):
        samples = []
        for _ in range(runs):
            result = subprocess.run([sys.executable, "-c", IMPORTS, kind], cwd=ROOT, capture_output=True, text=True,
                                    timeout=120)
            samples.append(json.loads(result.stdout.strip().splitlines()[-1]))
        out[kind] = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
    return out


def pss_after_start(weights: Path, logs: Path) -> dict:
    out = {}
    for workers in (1, 4):
        service = start(ROOT, weights, logs / f"pss-{workers}.log", workers=workers)
        try:
            wait_ready(service)
            service.wait_for_log("warmed up", count=workers)
            time.sleep(smoke_or(2, 0))
            pids = service.pids()
            out[workers] = {"pss_mib": sum(pss_kib(pid) for pid in pids) / 1024, "processes": len(pids)}
        finally:
            service.stop()
        print(f"  PSS with {workers} worker(s): {out[workers]}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="starts of each kind (alternating)")
    parser.add_argument("--baseline", default="b086718",
                        help="git ref of the service before the fast start ('' to skip)")
    parser.add_argument("--cold-file", action="store_true",
                        help="evict the checkpoints from the page cache before every start (as on a fresh "
                             "container: the file comes from disk; libraries stay cached)")
    parser.add_argument("--out", default="cold_start", help="name of the result files in bench/results")
    args = parser.parse_args()

    pt, converted = checkpoint(), converted_checkpoint()
    with tempfile.TemporaryDirectory(prefix="cold-start-") as scratch:
        scratch = Path(scratch)
        kinds = {"naive": lambda log: run_naive(pt),
                 "service .pt": lambda log: run_service(ROOT, pt, log),
                 "service .safetensors": lambda log: run_service(ROOT, converted, log)}
        before = baseline_tree(args.baseline, scratch / "baseline") if args.baseline else None
        if before:
            kinds[f"before ({args.baseline}) .pt"] = lambda log: run_service(before, pt, log)
        runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
        order = list(kinds)
        for round_ in range(args.runs):
            for kind in order[round_ % len(order):] + order[:round_ % len(order)]:
                if args.cold_file:
                    evict(pt, converted)
                result = kinds[kind](scratch / f"{kind.replace(' ', '_')}-{round_}.log")
                runs[kind].append(result)
                print(f"  round {round_ + 1} {kind}: {result['seconds']:.2f}s, peak RSS "
                      f"{result['peak_rss_mib']:.0f} MiB", flush=True)
        report = {"checkpoint": pt.name, "converted": converted.name, "baseline": args.baseline if before else None,
                  "cold_file": args.cold_file,
                  "cpus": len(os.sched_getaffinity(0)), "runs": runs,
                  "imports": import_times(args.runs), "pss": pss_after_start(converted, scratch)}

    results_file(f"{args.out}.json").write_text(json.dumps(report, indent=2))
    markdown = render(report)
    results_file(f"{args.out}.md").write_text(markdown)
    print(markdown)


def render(report: dict) -> str:
    runs = report["runs"]
    naive = statistics.median(r["seconds"] for r in runs["naive"])
    before = next((k for k in runs if k.startswith("before")), None)
    cache = ("evicted from the page cache before every start" if report.get("cold_file")
             else "in the page cache (warm)")
    lines = [
        f"Cold start, {report['cpus']} CPUs, checkpoint `{report['checkpoint']}` (random {MODEL}, real size) "
        f"{cache}; {len(runs['naive'])} alternating starts of each.", "",
        "| start | seconds (each start) | median | vs naive | CPU seconds (median) | peak RSS while loading "
        "(MiB, median) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for kind, results in runs.items():
        median = statistics.median(r["seconds"] for r in results)
        peak = statistics.median(r["peak_rss_mib"] for r in results)
        what = ("naive: import open_clip, create_model_and_transforms (to the model)" if kind == "naive"
                else f"gunicorn wsgi:app, {kind} (to the first /health/ready 200)")
        each = ", ".join(f"{r['seconds']:.2f}" for r in results)
        cpu = statistics.median(r["cpu_seconds"] for r in results)
        lines.append(f"| {what} | {each} | {median:.2f} | {median / naive:.2f}x | {cpu:.2f} | {peak:.0f} |")
    lines += ["", "Where the service's seconds go (median of the starts, from its log's timestamps):", ""]
    services = [k for k in runs if k != "naive"]
    lines += ["| stage | " + " | ".join(services) + " |", "| --- |" + " ---: |" * len(services)]
    names = []
    for kind in services:
        for result in runs[kind]:
            names += [n for n in result["stages"] if n not in names]
    for name in names:
        cells = []
        for kind in services:
            values = [r["stages"][name] for r in runs[kind] if name in r["stages"]]
            cells.append(f"{statistics.median(values):.2f}" if values else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    imports = report["imports"]
    lines += ["", "Imports (median seconds, separate processes):", "",
              "| import | open_clip as is | through lean_import.py |", "| --- | ---: | ---: |"]
    for name in imports["full"]:
        lines.append(f"| {name} | {imports['full'][name]:.2f} | {imports['lean'][name]:.2f} |")
    pss = {int(k): v for k, v in report["pss"].items()}
    lines += ["", f"PSS after start, converted checkpoint: 1 worker {pss[1]['pss_mib']:.0f} MiB, 4 workers "
              f"{pss[4]['pss_mib']:.0f} MiB: {pss[4]['pss_mib'] / pss[1]['pss_mib']:.2f}x (goal: at most 1.15x)."]
    def paired(kind: str) -> float:
        """Median over rounds of service / naive within the same round (robust to load that drifts)."""
        return statistics.median(s["seconds"] / n["seconds"] for s, n in zip(runs[kind], runs["naive"]))

    ratios = {k.split()[-1]: (statistics.median(r["seconds"] for r in runs[k]) / naive, paired(k))
              for k in ("service .safetensors", "service .pt")}
    lines += ["", "Goal, spawn to ready at most 0.5x the naive script's time to a loaded model: "
              + "; ".join(f"{k} {a:.2f}x (median of each round's ratio {b:.2f}x)" for k, (a, b) in ratios.items())
              + "."]
    if before:
        peak_before = statistics.median(r["peak_rss_mib"] for r in runs[before])
        peaks = {k: statistics.median(r["peak_rss_mib"] for r in runs[k]) for k in ("service .pt", "service .safetensors")}
        lines.append(f"Peak RSS while loading, before {peak_before:.0f} MiB; now "
                     + ", ".join(f"{k.split()[-1]} {v:.0f} MiB ({v / peak_before:.2f}x)" for k, v in peaks.items())
                     + " (goal: no higher).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
