"""CLIP_PRECISION=bf16 against fp32 in one process: how close the vectors are, and the model's speed.

    python bench/precision.py        # writes bench/results/precision.md and .json

For two fixed-seed random architectures (ViT-B-32, and ViT-B-32-quickgelu, laion400m_e32's), loads the
service's embedder twice (fp32 and bf16, both prepacked) and reports:
  - the cosine of each bf16 vector with its fp32 one, over the benchmark's photos (../shared/images, each
    decoded as the service does) and 512 generated texts; and the largest element difference;
  - the forward passes alone, 1 torch thread, random 224 px images in batches of 1, 4 and 16 and text
    batches of 32 (ms per item, best of 3 timed passes after a warm-up).
Needs a CPU with native bfloat16 (AVX512-BF16 or AMX); elsewhere it says so and writes nothing.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import MODEL, PHOTOS, best_of, checkpoint, make_texts, results_file, smoke_or  # noqa: E402

# The architectures compared; a smoke run takes the benchmark's model alone.
MODELS = smoke_or({MODEL: 0, "ViT-B-32-quickgelu": 1}, {MODEL: 0})  # name: the seed of its checkpoint


def measure(model_name: str, weights: Path) -> dict:
    import torch

    from clip_service.images.decoding import decode_image
    from clip_service.model.embedder import ClipEmbedder

    torch.set_num_threads(1)
    embedders = {p: ClipEmbedder.load(model_name, str(weights), "cpu", precision=p) for p in ("fp32", "bf16")}
    assert embedders["bf16"].precision == "bf16"
    files = sorted(p for p in PHOTOS.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    images = [decode_image(p.read_bytes(), max_pixels=10**8, draft_size=224) for p in files]
    texts = make_texts(smoke_or(512, 32))
    out: dict = {"photo_count": len(images), "text_count": len(texts)}
    for kind, embed in (("images", lambda e: e.embed_images(images)), ("texts", lambda e: e.embed_texts(texts))):
        fp32, bf16 = embed(embedders["fp32"]), embed(embedders["bf16"])
        cosines = (fp32.astype(np.float64) * bf16).sum(axis=1)
        out[kind] = {"min_cosine": float(cosines.min()), "mean_cosine": float(cosines.mean()),
                     "max_abs_difference": float(np.abs(fp32 - bf16).max())}
    speed = {}
    with torch.inference_mode():
        for batch in (1, 4, 16):
            pixels = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
            speed[f"image batch {batch}"] = {p: 1000 * best_of(lambda e=e: e._encode_pixels(pixels), 3) / batch
                                             for p, e in embedders.items()}
        tokens = embedders["fp32"].tokenize(texts[:32])
        speed["text batch 32"] = {p: 1000 * best_of(lambda e=e: e.embed_tokens(tokens), 3) / 32
                                  for p, e in embedders.items()}
    out["ms_per_item"] = speed
    return out


def render(report: dict) -> str:
    lines = ["# bf16 against fp32 (`python bench/precision.py`)", "",
             f"{time.strftime('%Y-%m-%d')}, fixed-seed random weights, 1 torch thread, both prepacked.", "",
             "| model | vectors | min cosine | mean cosine | largest element difference |",
             "| --- | --- | ---: | ---: | ---: |"]
    for model, r in report.items():
        for kind in ("images", "texts"):
            c = r[kind]
            count = r["photo_count"] if kind == "images" else r["text_count"]
            lines.append(f"| {model} | {count} {kind} | {c['min_cosine']:.6f} | {c['mean_cosine']:.6f} "
                         f"| {c['max_abs_difference']:.1e} |")
    lines += ["", "| model | forward pass | fp32 ms per item | bf16 ms per item | bf16 speed-up |",
              "| --- | --- | ---: | ---: | ---: |"]
    for model, r in report.items():
        for name, t in r["ms_per_item"].items():
            lines.append(f"| {model} | {name} | {t['fp32']:.1f} | {t['bf16']:.1f} | {t['fp32'] / t['bf16']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from clip_service.model.prepacked import bf16_native

    if not bf16_native():
        print("this CPU has no native bfloat16 products (AVX512-BF16 or AMX): nothing to measure")
        return
    report = {}
    for model_name, seed in MODELS.items():
        report[model_name] = measure(model_name, checkpoint(model_name, seed))
        print(model_name, json.dumps(report[model_name]), flush=True)
    results_file("precision.json").write_text(json.dumps(report, indent=2))
    results_file("precision.md").write_text(render(report))
    print(render(report))


if __name__ == "__main__":
    main()
