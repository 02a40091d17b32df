"""The CUDA path, checked on a GPU machine: same vectors as the CPU path, through the real app, and its speed.

    python bench/gpu_check.py     # needs CUDA; writes bench/results/gpu.md (and $OUT/gpu.md when set)

Uses the fixed-seed random ViT-B-32 of bench/harness.py (no hub access needed).
"""

from __future__ import annotations

import base64
import io
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import MODEL, best_of, checkpoint, make_texts, results_file  # noqa: E402

TEXTS = make_texts(512)


def random_images(count: int, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (300 + 7 * i, 400, 3), dtype=np.uint8)) for i in range(count)]


def data_uri(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def main() -> None:
    import open_clip

    from clip_service import create_app
    from clip_service.model.embedder import ClipEmbedder

    lines = [f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", ""]
    ck = str(checkpoint())
    cpu = ClipEmbedder.load(MODEL, ck, "cpu")
    gpu = ClipEmbedder.load(MODEL, ck, "auto")
    lines.append(f"CLIP_DEVICE=auto picked {gpu.device}; prepacked blocks on GPU: {gpu.prepacked_blocks} "
                 f"(CPU: {cpu.prepacked_blocks})")
    reference, _, _ = open_clip.create_model_and_transforms(MODEL, pretrained=ck, device="cuda")
    reference.eval()
    tokenizer = open_clip.get_tokenizer(MODEL)

    lines += ["", "| check | max abs difference |", "| --- | ---: |"]
    for count in (1, 3, 40, 200):  # trimmed, trimmed, packed, packed over several max_batch passes
        texts = TEXTS[:count]
        ours = gpu.embed_texts(texts)
        with torch.inference_mode():
            theirs = reference.encode_text(tokenizer(texts).cuda(), normalize=True).float().cpu().numpy()
        lines.append(f"| {count} texts: service on GPU vs open_clip on GPU | {np.abs(ours - theirs).max():.2e} |")
        lines.append(f"| {count} texts: service on GPU vs service on CPU | "
                     f"{np.abs(ours - cpu.embed_texts(texts)).max():.2e} |")
    images = random_images(8)
    ours = gpu.embed_images(images)
    with torch.inference_mode():
        theirs = reference.encode_image(torch.stack([gpu.preprocess(i) for i in images]).cuda(),
                                        normalize=True).float().cpu().numpy()
    lines.append(f"| 8 images: service on GPU vs open_clip on GPU | {np.abs(ours - theirs).max():.2e} |")
    lines.append(f"| 8 images: service on GPU vs service on CPU | {np.abs(ours - cpu.embed_images(images)).max():.2e} |")

    # The real app, configured from the environment as a deployment would be.
    os.environ.update({"CLIP_MODEL": MODEL, "CLIP_PRETRAINED": ck, "CLIP_DEVICE": "auto"})
    client = create_app({"TESTING": True}).test_client()
    texts = TEXTS[:5]
    response = client.post("/embed/text", json={"texts": texts})
    app_text = np.asarray(response.get_json()["embeddings"], dtype=np.float32)
    response = client.post("/embed/image", json={"urls": [data_uri(i) for i in images[:3]]})
    app_images = np.asarray(response.get_json()["embeddings"], dtype=np.float32)
    ready = client.get("/health/ready")
    lines.append(f"| app /embed/text on GPU vs service on CPU | {np.abs(app_text - cpu.embed_texts(texts)).max():.2e} |")
    lines.append(f"| app /embed/image (data URIs) on GPU vs service on CPU | "
                 f"{np.abs(app_images - cpu.embed_images(images[:3])).max():.2e} |")
    lines.append(f"| app /health/ready | status {ready.status_code} |")

    batch = TEXTS[:256]
    photos = random_images(64, seed=1)
    # Every timed call ends by copying its vectors to the host, which waits for the GPU.
    with torch.inference_mode():
        full = best_of(lambda: reference.encode_text(tokenizer(batch).cuda(), normalize=True).cpu())
        served = best_of(lambda: gpu.embed_texts(batch))
        plain_images = best_of(lambda: reference.encode_image(
            torch.stack([gpu.preprocess(i) for i in photos]).cuda(), normalize=True).cpu())
        served_images = best_of(lambda: gpu.embed_images(photos))
    lines += ["", "| GPU throughput | items/s |", "| --- | ---: |",
              f"| open_clip encode_text, 256 texts of 5-20 words (full 77 tokens) | {256 / full:.0f} |",
              f"| service embed_texts, same texts (packed) | {256 / served:.0f} |",
              f"| open_clip preprocess + encode_image, 64 images | {64 / plain_images:.0f} |",
              f"| service embed_images, same images | {64 / served_images:.0f} |"]
    report = "\n".join(lines) + "\n"
    print(report)
    results_file("gpu.md").write_text(report)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu.md").write_text(report)


if __name__ == "__main__":
    main()
