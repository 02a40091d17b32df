"""A lone request's use of the cores, side by side in one run: this service, the code before, the seed, open_clip.

    python bench/lone_request.py [--rounds 3]   # writes bench/results/lone_request.md and .json
    python bench/lone_request.py --alone        # this checkout only: no worktrees of the earlier commits

Issue #15 part 2. Three services run one after another, in a rotating order for ``--rounds`` rounds
(each figure is the median round), on the same checkpoint (fixed-seed random ViT-B-32), photos and machine:
  - "now": this checkout (vector cache off, so repeated photos cost the model each time);
  - "before": the code when the issue was filed (commit 2379a78), from a temporary worktree;
  - "seed": the first version of the service (commit f558a89), the issue's "seed-style baseline";
and plain open_clip in this process: decode with JPEG draft, preprocess and encode_image on both cores.
Scenarios: 4 photos of 12 MP per request from 1 client; single 640 px photos from 8 clients; and, for
now/before, the scenarios at their limit today (text batches, single texts, 16-URL requests).
On a CPU with native bfloat16 a fourth service runs: this checkout with CLIP_PRECISION=bf16 ("now, bf16").
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (  # noqa: E402
    MODEL,
    PHOTOS,
    ROOT,
    checkpoint,
    make_texts,
    photo_server,
    results_file,
    run_load,
    smoke_or,
    start_service,
)
from clip_service.model.prepacked import bf16_native  # noqa: E402
from tests.support.image_server import ImageServer  # noqa: E402

COMMITS = {"before": "2379a78", "seed": "f558a89"}
TEXTS = make_texts(512)
SMALL = [f"/photo640/{p.name}" for p in sorted((PHOTOS / "photo640").iterdir())] + ["/orig/rocket.jpg",
                                                                                     "/orig/retina.jpg"]


def post(session, url: str, body: dict) -> bool:
    response = session.post(url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}, timeout=300)
    return response.status_code == 200 and not response.json().get("errors")


def large_photos(folder: Path) -> list[str]:
    """Four distinct 12 MP JPEGs: the three in large/ and a mirrored one (distinct bytes)."""
    names = []
    sources = sorted((PHOTOS / "large").iterdir())
    for i, source in enumerate(sources + sources[:1]):
        image = Image.open(source)
        if i >= len(sources):
            image = ImageOps.mirror(image)
        name = f"large_{i}.jpg"
        image.save(folder / name, "JPEG", quality=92)
        names.append(name)
    return names


def load_scenarios(base: str, small: list[str], large: list[str], rng: random.Random) -> dict:
    """Scenario name -> (send, clients, requests, items per request); the 12 MP one only with ``large``.

    bench/ab.py runs one of these on its own."""
    todo = {
        "single image, 8 clients": (lambda s: post(s, base + "/embed/image", {"urls": [rng.choice(small)]}), 8, 96, 1),
        "text batch 32, 2 clients": (lambda s: post(s, base + "/embed/text", {"texts": rng.sample(TEXTS, 32)}),
                                     2, 40, 32),
        "single text, 8 clients": (lambda s: post(s, base + "/embed/text", {"texts": [rng.choice(TEXTS)]}),
                                   8, 480, 1),
        "image batch 16 URLs, 2 clients": (lambda s: post(s, base + "/embed/image", {"urls": small[:16]}), 2, 20, 16),
    }
    if large:
        todo["4 x 12 MP per request, 1 client"] = (lambda s: post(s, base + "/embed/image", {"urls": large}), 1, 12, 4)
    return todo


def scenarios(base: str, photos: ImageServer, large: list[str], *, full: bool) -> dict:
    order = ["4 x 12 MP per request, 1 client", "single image, 8 clients"]
    if full:
        order += ["text batch 32, 2 clients", "single text, 8 clients", "image batch 16 URLs, 2 clients"]
    table = load_scenarios(base, [photos.url(f) for f in SMALL], large, random.Random(1))
    todo = {name: table[name] for name in order}
    out = {}
    for name, (send, clients, total, items) in todo.items():
        import requests

        post(requests.Session(), base + "/embed/text", {"texts": ["warm"]})
        out[name] = run_load(send, clients=clients, requests_total=total, items_per_request=items, max_seconds=300)
        print(f"  {name}: {out[name]}", flush=True)
    return out


def in_process(large_files: list[Path]) -> dict:
    """open_clip in this process: draft-decode, preprocess and encode the 4 photos, torch on both cores."""
    import open_clip
    import torch

    from clip_service.images.decoding import decode_image

    torch.set_num_threads(2)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL, pretrained=str(checkpoint()))
    model.eval()
    data = [f.read_bytes() for f in large_files]

    def once():
        pixels = torch.stack([preprocess(decode_image(d, max_pixels=10**8, draft_size=224)) for d in data])
        with torch.inference_mode():
            model.encode_image(pixels, normalize=True)

    once()
    started, rounds = time.perf_counter(), smoke_or(6, 1)
    for _ in range(rounds):
        once()
    return {"items_per_s": len(data) * rounds / (time.perf_counter() - started)}


def model_ceiling(runners: int = 2, batch: int = 4, rounds: int = 8, precision: str = "fp32") -> dict:
    """The service's own forward passes alone (prepacked, no HTTP, no decoding): what 8 clients of single
    images can reach at most. ``runners`` threads of 1 torch thread each run batches of ``batch`` random
    224 px images, as the default batch runners do with 8 such clients."""
    import threading

    import torch

    from clip_service.model.embedder import ClipEmbedder

    embedder = ClipEmbedder.load(MODEL, str(checkpoint()), "cpu", precision=precision)
    pixels = torch.randn(batch, 3, 224, 224)

    def run():
        torch.set_num_threads(1)
        with torch.inference_mode():
            for _ in range(rounds):
                embedder._encode_pixels(pixels)

    rounds = smoke_or(rounds, 1)
    run()  # warm-up
    threads = [threading.Thread(target=run) for _ in range(runners)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"items_per_s": runners * rounds * batch / (time.perf_counter() - started), "runners": runners,
            "batch": batch}


def worktree(commit: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"clip-{commit}-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(path), commit], cwd=ROOT, check=True,
                   capture_output=True)
    return path


def median_run(results: list[dict]) -> dict:
    """The run with the median throughput (the lower middle one of an even count)."""
    return sorted(results, key=lambda r: r["items_per_s"])[(len(results) - 1) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three services, in a rotating order")
    parser.add_argument("--alone", action="store_true", help="this checkout only, not the earlier commits")
    args = parser.parse_args()
    rounds = args.rounds
    checkpoint()
    photos = photo_server()
    report: dict = {"commits": {} if args.alone else COMMITS}
    trees = {}
    try:
        with tempfile.TemporaryDirectory(dir=PHOTOS) as folder:
            names = large_photos(Path(folder))
            large = [photos.url(f"/{Path(folder).name}/{n}") for n in names]
            report["in-process open_clip, draft decoding, 2 threads"] = in_process([Path(folder) / n for n in names])
            print("in-process:", report["in-process open_clip, draft decoding, 2 threads"], flush=True)
            report["model only, 2 runners x batches of 4"] = model_ceiling()
            print("model only:", report["model only, 2 runners x batches of 4"], flush=True)
            runs: dict[str, list[dict]] = {"now": [], **{label: [] for label in report["commits"]}}
            if bf16_native():
                runs["now, bf16"] = []
                report["model only, bf16"] = model_ceiling(precision="bf16")
                print("model only, bf16:", report["model only, bf16"], flush=True)
            labels = list(runs)
            for round_number in range(rounds):  # a rotating order, so drift of the machine hits all alike
                turn = round_number % len(labels)
                for label in labels[turn:] + labels[:turn]:
                    cwd = None if label.startswith("now") else trees.setdefault(label, worktree(COMMITS[label]))
                    print(f"round {round_number + 1}, service: {label}", flush=True)
                    env = {"CLIP_CACHE_MB": "0", **({"CLIP_PRECISION": "bf16"} if label == "now, bf16" else {})}
                    svc = start_service(env, photo_port=photos.port, cwd=cwd)
                    try:
                        runs[label].append(scenarios(svc.base, photos, large, full=label != "seed"))
                    finally:
                        svc.stop()
            report["rounds"] = rounds
            for label, results in runs.items():
                report[label] = {name: median_run([r[name] for r in results]) for name in results[0]}
    finally:
        photos.close()
        for path in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, capture_output=True)
    results_file("lone_request.json").write_text(json.dumps(report, indent=2))
    results_file("lone_request.md").write_text(render(report))
    print(render(report))


def render(report: dict) -> str:
    now, bf16 = report["now"], report.get("now, bf16", {})
    before, seed = report.get("before", {}), report.get("seed", {})  # none with --alone
    inproc = report["in-process open_clip, draft decoding, 2 threads"]["items_per_s"]
    lines = ["# A lone request and the busy case, side by side in one run", "",
             f"`python bench/lone_request.py`, {time.strftime('%Y-%m-%d')}, fixed-seed random {MODEL}, 2 vCPU; "
             + "".join(f"{label} = {commit}; " for label, commit in report["commits"].items()) + "vector cache off; "
             f"median of {report.get('rounds', 1)} rounds, the services in a rotating order.", "",
             "| scenario | now (items/s) | before | seed | now / seed | now / before | now / in-process "
             "| now, bf16 | bf16 / seed | bf16 / now |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in now.items():
        b = before.get(name, {}).get("items_per_s")
        s = seed.get(name, {}).get("items_per_s")
        f = bf16.get(name, {}).get("items_per_s")
        ratio = lambda x, y: f"{x / y:.2f}x" if x and y else "-"  # noqa: E731
        ip = ratio(r["items_per_s"], inproc) if name.startswith("4 x 12 MP") else "-"
        n = r["items_per_s"]
        lines.append(f"| {name} | {n:.1f} | {b or 0:.1f} | {s or 0:.1f} | {ratio(n, s)} | {ratio(n, b)} | {ip} "
                     f"| {f or 0:.1f} | {ratio(f, s)} | {ratio(f, n)} |")
    lines += ["", f"In-process open_clip (draft decoding, preprocess, encode_image of the same 4 photos, 2 torch "
                  f"threads): {inproc:.2f} photos/s."]
    ceiling = report.get("model only, 2 runners x batches of 4")
    single, single_seed = now.get("single image, 8 clients"), seed.get("single image, 8 clients")
    if ceiling and single and single_seed:
        lines += ["", f"The service's forward passes alone (prepacked ViT-B-32, 2 runner threads x 1 torch thread, "
                      f"batches of 4 random 224 px images, no HTTP or decoding): {ceiling['items_per_s']:.1f} images/s. "
                      f"Single images from 8 clients reach {single['items_per_s'] / ceiling['items_per_s']:.0%} of it; "
                      f"1.7x the seed would be {1.7 * single_seed['items_per_s']:.1f} images/s, "
                      f"{1.7 * single_seed['items_per_s'] / ceiling['items_per_s']:.2f}x what the model alone computes."]
    ceiling_bf16 = report.get("model only, bf16")
    if ceiling_bf16 and ceiling:
        lines += ["", f"The same forward passes with CLIP_PRECISION=bf16: {ceiling_bf16['items_per_s']:.1f} images/s "
                      f"({ceiling_bf16['items_per_s'] / ceiling['items_per_s']:.2f}x fp32)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
