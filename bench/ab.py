"""A paired A/B of one load scenario: this checkout against a git ref, alternating, round after round.

    python bench/ab.py --ref 2379a78 --scenario single-text --rounds 4
    python bench/ab.py --ref HEAD --scenario single-text --env '{"GUNICORN_CMD_ARGS": "--worker-class gthread"}'
    python bench/ab.py --ref HEAD --scenario single-text --env '{"CLIP_PRECISION": "auto", "CLIP_BATCH_WINDOW_MS": "2"}' \
        --ref-env '{"CLIP_PRECISION": "auto"}'   # one setting, the same checkout, in bf16 where the CPU has it
    python bench/ab.py --this 1a50b8b --ref 1a50b8b^1 --scenario single-text   # two commits
    python bench/ab.py --scenario single-text --rounds 1   # this checkout alone: its figures, no ratio

Each round starts both services in turn (the order swaps every round), warms each up and runs the
scenario against it; the answer is each round's ratio and the median ratio. Use it to tell a small
regression from the machine's drift: a sequential run (bench/lone_request.py) of the same services
can differ by 5% from round to round here. ``--env`` applies to this checkout's service, ``--ref-env`` to
the ref's. Vector cache off for both. Prints; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import ROOT, photo_server, run_load, smoke_or, start_service  # noqa: E402
from bench.lone_request import SMALL, load_scenarios, post, worktree  # noqa: E402


# Short names for the scenarios of bench/lone_request.py (the 12 MP one needs its own photos).
SCENARIOS = {"single-text": "single text, 8 clients", "text-batch": "text batch 32, 2 clients",
             "single-image": "single image, 8 clients", "16-urls": "image batch 16 URLs, 2 clients"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ref", default=None, help="the git ref to compare this checkout with (none: run "
                                                    "this checkout alone)")
    parser.add_argument("--scenario", required=True, choices=list(SCENARIOS))
    parser.add_argument("--scale", type=float, default=1.25, help="requests per round, times lone_request.py's")
    parser.add_argument("--this", default=None, help="a git ref to run instead of this checkout")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--env", default="{}", help="JSON of extra environment for this checkout's service")
    parser.add_argument("--ref-env", default="{}", help="JSON of extra environment for the ref's service")
    args = parser.parse_args()
    extra, ref_extra = json.loads(args.env), json.loads(args.ref_env)
    photos = photo_server()
    small = [photos.url(f) for f in SMALL]
    tree = worktree(args.ref) if args.ref else None
    this_tree = worktree(args.this) if args.this else None
    results: dict[str, list[float]] = {"this": [], "ref": []} if tree else {"this": []}
    try:
        for round_number in range(args.rounds):
            labels = list(results) if round_number % 2 == 0 else list(reversed(results))
            for label in labels:
                env = {"CLIP_CACHE_MB": "0", **(extra if label == "this" else ref_extra)}
                svc = start_service(env, photo_port=photos.port, cwd=this_tree if label == "this" else tree)
                try:
                    for _ in range(smoke_or(20, 1)):
                        post(requests.Session(), svc.base + "/embed/text", {"texts": ["warm"]})
                    table = load_scenarios(svc.base, small, [], random.Random(round_number))
                    send, clients, total, items = table[SCENARIOS[args.scenario]]
                    result = run_load(send, clients=clients, requests_total=round(total * args.scale),
                                      items_per_request=items, max_seconds=180)
                finally:
                    svc.stop()
                results[label].append(result["items_per_s"])
                print(f"round {round_number + 1} {label}: {result['items_per_s']:.1f} items/s, "
                      f"p50 {result['p50_ms']:.0f} ms", flush=True)
    finally:
        photos.close()
        for path in filter(None, (tree, this_tree)):
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, capture_output=True)
    if not tree:
        return
    ratios = [a / b for a, b in zip(results["this"], results["ref"])]
    print(f"{args.scenario}, {args.this or 'this checkout'} / {args.ref}: per round "
          + ", ".join(f"{r:.2f}x" for r in ratios) + f"; median {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
