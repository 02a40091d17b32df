"""One text at a time through the text tower, in fresh processes: this checkout's loader against open_clip's.

    python bench/text_encode.py [--rounds 4] [--ref 2379a78]

A single text's forward pass streams every weight of the text tower from memory (~150 MB for
ViT-B-32), so it shows where a loader puts the prepacked weights. Each round runs, each in a new
process on the fixed-seed random ViT-B-32 `.pt` with 1 torch thread and the service's allocator
setting (ops/allocator.py; a ref older than it runs with glibc's defaults, as it did):
  - fast: this checkout's loader (meta device, memory-mapped checkpoint, prepacked from the mapping);
  - open_clip: this checkout with the model built by open_clip (the loader's fallback path);
  - ref: the embedder of ``--ref`` (a git worktree), when given.
Prints the best of 3 passes over 200 texts per process (ms per text) and the medians. Writes nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import MODEL, ROOT, checkpoint, make_texts, smoke_or  # noqa: E402

# The texts and passes come on stdin: the child imports nothing from bench/, which a --ref tree may lack.
CHILD = r"""
import json, sys, time
tree, mode, model_name, weights = sys.argv[1:5]
job = json.load(sys.stdin)
sys.path.insert(0, tree)
import torch
torch.set_num_threads(1)
try:
    from clip_service.ops.allocator import return_large_blocks_to_the_os
    return_large_blocks_to_the_os()
    from clip_service.model import loading
    from clip_service.model.embedder import ClipEmbedder
    if mode == "open_clip":
        # Assigning a name the loader no longer has would time the fast path twice, unseen.
        assert hasattr(loading, "_fast_path_covers"), "loading.py renamed _fast_path_covers: update this benchmark"
        loading._fast_path_covers = lambda *args: False
except ImportError:  # an older layout
    from clip_service.embedder import ClipEmbedder
embedder = ClipEmbedder.load(model_name, weights, "cpu")
tokens = [embedder.tokenizer([t]) for t in job["texts"]]
best = float("inf")
with torch.inference_mode():
    for t in tokens[:20]:
        embedder._encode_tokens(t)
    for _ in range(job["passes"]):
        started = time.perf_counter()
        for t in tokens:
            embedder._encode_tokens(t)
        best = min(best, (time.perf_counter() - started) / len(tokens))
print(f"{best * 1000:.3f}")
"""


def one(tree: Path, mode: str) -> float:
    job = json.dumps({"texts": make_texts(smoke_or(200, 10)), "passes": smoke_or(3, 1)})
    out = subprocess.run([sys.executable, "-c", CHILD, str(tree), mode, MODEL, str(checkpoint())], input=job,
                         capture_output=True, text=True, check=True, cwd=tree)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--ref", default=None, help="also time the embedder of this git ref")
    args = parser.parse_args()
    runs = {"fast": (ROOT, "fast"), "open_clip": (ROOT, "open_clip")}
    ref_tree = None
    if args.ref:
        from bench.lone_request import worktree

        ref_tree = worktree(args.ref)
        runs["ref"] = (ref_tree, "fast")
    times: dict[str, list[float]] = {name: [] for name in runs}
    try:
        for round_number in range(args.rounds):
            names = list(runs)
            for name in names[round_number % len(names):] + names[:round_number % len(names)]:
                times[name].append(one(*runs[name]))
            print(f"round {round_number + 1}: " + ", ".join(f"{n} {t[-1]:.2f} ms" for n, t in times.items()),
                  flush=True)
    finally:
        if ref_tree:
            subprocess.run(["git", "worktree", "remove", "--force", str(ref_tree)], cwd=ROOT, capture_output=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print("median ms per text: " + ", ".join(f"{n} {m:.2f}" for n, m in medians.items())
          + f"; fast / open_clip {medians['fast'] / medians['open_clip']:.3f}x")


if __name__ == "__main__":
    main()
