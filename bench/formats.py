"""Vector formats (#31), side by side in one run: what each costs on the wire and what it keeps of the ranking.

    python bench/formats.py                      # writes bench/results/formats.md and .json
    python bench/formats.py --texts 600 --images 200   # a smaller corpus for the recall part

1. The wire: 256 texts and 64 images through ``gunicorn wsgi:app`` in each ``encoding``
   (the vectors cached after the first request, so the rows compare encoding, transfer
   and parsing, not the model): answer bytes, the request's time, and the client's time
   from the answer's bytes to a numpy array (``clip_service.client.vectors``, what
   ``ClipClient`` runs), best of 5 each.
2. The ranking: the vectors of a few thousand distinct texts and images (random crops,
   flips and turns of the photographs) from the same model in this process; for each
   query (200 texts, 200 images) its 10 nearest neighbours among all the others by
   float32 cosine are the truth, and recall@10 is the share of them that each compact
   format finds: float16 and int8 with both sides in the format (as a database stores
   them), binary by Hamming distance, and binary's top 40 or 100 rescored with the float
   vectors. The weights are random (real ones cannot be downloaded here): they still
   place similar inputs near each other (crops of one photo, texts sharing words), which
   is enough to compare the formats with each other, not to promise a real model's recall.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import requests
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (  # noqa: E402
    MODEL,
    PHOTOS,
    best_of,
    checkpoint,
    make_texts,
    photo_server,
    results_file,
    smoke_or,
    start_service,
)
from clip_service import encodings  # noqa: E402
from clip_service.client import vectors  # noqa: E402

# The client's dtype that reads each format (float: the JSON numbers, read as float32).
CLIENT_DTYPES = {"float": "float32", "base64": "float32", "float16": "float16", "int8": "int8", "uint8": "uint8",
                 "binary": "binary", "ubinary": "ubinary"}
K = 10


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


# --- 1. the wire -------------------------------------------------------------------------------------

def to_numpy(content: bytes, key: str, fmt: str, dimensions: int) -> np.ndarray:
    """The client's work: an answer's bytes to one array of the asked dtype."""
    rows = orjson.loads(content)[key]
    dtype = CLIENT_DTYPES[fmt]
    out = vectors.empty(len(rows), dtype, dimensions)
    for i, row in enumerate(rows):
        out[i] = vectors.row(row, fmt, dtype, dimensions)
    return out


def wire(base: str, path: str, body: dict, dimensions: int) -> list[dict]:
    session = requests.Session()
    url = base + path

    def post(fmt: str) -> bytes:
        response = session.post(url, data=orjson.dumps({**body, "encoding": fmt}),
                                headers={"Content-Type": "application/json"}, timeout=600)
        assert response.status_code == 200, response.text[:300]
        return response.content

    floats = to_numpy(post("float"), "embeddings", "float", dimensions)  # and the vectors into the cache
    rows = []
    for fmt in encodings.FORMATS:
        content = post(fmt)
        array = to_numpy(content, "embeddings", fmt, dimensions)
        count = len(array)
        rows.append({"format": fmt, "vectors": count, "answer_bytes": len(content),
                     "bytes_per_vector": round(len(content) / count),
                     # The service's own share: the vectors to the answer's bytes (encodings.py, then orjson).
                     "encode_ms": 1000 * best_of(lambda: orjson.dumps({"embeddings": encodings.to_json(floats, fmt)},
                                                                      option=orjson.OPT_SERIALIZE_NUMPY)),
                     "request_ms": 1000 * best_of(lambda: post(fmt)),
                     "to_numpy_ms": 1000 * best_of(lambda: to_numpy(content, "embeddings", fmt, dimensions)),
                     "numpy_bytes_per_vector": array.nbytes // count})
    session.close()
    return rows


# --- 2. the ranking ----------------------------------------------------------------------------------

def distinct_texts(n: int) -> list[str]:
    texts: dict[str, None] = {}
    seed = 0
    while len(texts) < n:
        texts.update(dict.fromkeys(make_texts(n, seed)))
        seed += 1
    return list(texts)[:n]


def distinct_images(n: int, seed: int = 0):
    """``n`` different views of the photographs: a random crop (30-100 % of a side), flip, turn and brightness."""
    rng = random.Random(seed)
    sources = [Image.open(p).convert("RGB") for p in sorted((PHOTOS / "photo640").glob("*.jpg"))]
    for _ in range(n):
        photo = rng.choice(sources)
        side = rng.uniform(0.3, 1.0)
        w, h = int(photo.width * side), int(photo.height * side)
        x, y = rng.randint(0, photo.width - w), rng.randint(0, photo.height - h)
        view = photo.crop((x, y, x + w, y + h))
        if rng.random() < 0.5:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        view = view.rotate(rng.choice((0, 90, 180, 270)), expand=True)
        yield ImageEnhance.Brightness(view).enhance(rng.uniform(0.7, 1.3))


def embed_corpus(n_texts: int, n_images: int) -> tuple[np.ndarray, np.ndarray, float]:
    from clip_service.model.embedder import ClipEmbedder

    embedder = ClipEmbedder.load(MODEL, str(checkpoint()), "cpu")
    started = time.perf_counter()
    texts = distinct_texts(n_texts)
    text_vectors = np.concatenate([embedder.embed_texts(texts[i:i + 128]) for i in range(0, len(texts), 128)])
    images, batch = [], []
    for view in distinct_images(n_images):
        batch.append(view)
        if len(batch) == 32:
            images.append(embedder.embed_images(batch))
            batch = []
    if batch:
        images.append(embedder.embed_images(batch))
    return text_vectors, np.concatenate(images), time.perf_counter() - started


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Each row's k best columns (their order does not matter for recall)."""
    return np.argpartition(-scores, k, axis=1)[:, :k]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found, truth)]))


def ranking(corpus: np.ndarray, queries: np.ndarray) -> dict:
    """recall@10 of each compact format against float32, queries being rows of ``corpus`` (themselves excluded)."""
    dims = corpus.shape[1]

    def scores(query_values: np.ndarray, corpus_values: np.ndarray) -> np.ndarray:
        s = query_values @ corpus_values.T
        s = s.astype(np.float64)
        s[np.arange(len(queries)), queries] = -np.inf  # a query is not its own neighbour
        return s

    exact = scores(corpus[queries], corpus)
    truth = top_k(exact, K)
    out = {}
    half = encodings.quantize(corpus, "float16").astype(np.float32)
    out["float16"] = recall(top_k(scores(half[queries], half), K), truth)
    int8 = encodings.quantize(corpus, "int8").astype(np.int32)
    out["int8"] = recall(top_k(scores(int8[queries], int8), K), truth)
    for scale in (128, 512):  # not served: what another fixed scale would have kept, for the choice of 256
        other = np.clip(np.rint(corpus * scale), -128, 127)
        out[f"int8 at scale {scale} (not served)"] = recall(top_k(scores(other[queries], other), K), truth)
    # Hamming distance = (d - signs . signs) / 2: the same order as the dot product of the +-1 vectors.
    signs = encodings.to_float(encodings.quantize(corpus, "ubinary"), "ubinary", dims)
    hamming = scores(signs[queries], signs)
    out["binary (Hamming)"] = recall(top_k(hamming, K), truth)
    for pool in (4 * K, 10 * K):
        pool = min(pool, corpus.shape[0] - 1)
        candidates = top_k(hamming, pool)
        rescored = np.take_along_axis(exact, candidates, axis=1)  # the float vectors' cosine of each candidate
        best = np.take_along_axis(candidates, top_k(rescored, K), axis=1)
        out[f"binary, top {pool} rescored with float"] = recall(best, truth)
    return out


def run(n_texts: int, n_images: int) -> dict:
    photos = photo_server()
    service = start_service({"CLIP_WORKERS": "1"}, photos.port)
    try:
        dimensions = requests.get(service.base + "/v1/models", timeout=10).json()["data"][0]["dimensions"]
        names = sorted(p.name for p in (PHOTOS / "photo640").glob("*.jpg"))
        urls = [photos.url(f"/photo640/{names[i % len(names)]}") for i in range(smoke_or(64, 4))]
        texts = make_texts(smoke_or(256, 8), seed=1)
        wire_rows = {"texts": wire(service.base, "/embed/text", {"texts": texts}, dimensions),
                     "images": wire(service.base, "/embed/image", {"urls": urls}, dimensions)}
    finally:
        service.stop()
        photos.close()
    text_vectors, image_vectors, seconds = embed_corpus(n_texts, n_images)
    corpus = np.concatenate([text_vectors, image_vectors])
    rng = np.random.default_rng(0)
    per_side = smoke_or(200, 10)
    text_queries = rng.choice(len(text_vectors), size=min(per_side, len(text_vectors)), replace=False)
    image_queries = len(text_vectors) + rng.choice(len(image_vectors), size=min(per_side, len(image_vectors)),
                                                   replace=False)
    int8 = np.rint(corpus * encodings.INT8_SCALE)
    neighbours = np.sort(corpus @ corpus.T, axis=1)[:, ::-1][:, 1:K + 2]  # [0] is the vector itself
    return {
        "date": time.strftime("%Y-%m-%d"), "model": MODEL, "cpu": cpu_name(), "dimensions": dimensions, "wire": wire_rows,
        "corpus": {"texts": len(text_vectors), "images": len(image_vectors), "embed_seconds": round(seconds, 1),
                   "queries_per_kind": len(text_queries),
                   "largest_component": float(np.abs(corpus).max()),
                   "int8_clipped_share": float(np.mean((int8 > 127) | (int8 < -128))),
                   "share_clipped_at_scale_512": float(np.mean(np.abs(np.rint(corpus * 512)) > 127)),
                   "median_cosine_10th_neighbour": {
                       "texts": float(np.median(neighbours[:len(text_vectors), K - 1])),
                       "images": float(np.median(neighbours[len(text_vectors):, K - 1]))},
                   "median_gap_10th_11th": {
                       "texts": float(np.median(-np.diff(neighbours[:len(text_vectors), K - 1:K + 1]))),
                       "images": float(np.median(-np.diff(neighbours[len(text_vectors):, K - 1:K + 1])))}},
        "recall_at_10": {"text queries": ranking(corpus, text_queries),
                         "image queries": ranking(corpus, image_queries),
                         "all": ranking(corpus, np.concatenate([text_queries, image_queries]))},
    }


def markdown(result: dict) -> str:
    lines = [f"# Vector formats (`python bench/formats.py`, {result['date']}; fixed-seed random {result['model']}, "
             f"{result['dimensions']}-d; {result['cpu']})", ""]
    for kind in ("texts", "images"):
        rows = result["wire"][kind]
        lines += [f"## {rows[0]['vectors']} {kind} per request (`/embed/{'text' if kind == 'texts' else 'image'}`, vectors cached)", "",
                  "| encoding | answer bytes | bytes / vector | service encodes, ms | request ms | client to numpy, ms "
                  "| numpy bytes / vector |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| `{r['format']}` | {r['answer_bytes']:,} | {r['bytes_per_vector']:,} | {r['encode_ms']:.2f} | "
                  f"{r['request_ms']:.1f} | {r['to_numpy_ms']:.2f} | {r['numpy_bytes_per_vector']:,} |" for r in rows]
        lines.append("")
    corpus = result["corpus"]
    lines += [f"## recall@10 against float32 ({corpus['texts']:,} texts + {corpus['images']:,} images, "
              f"{corpus['queries_per_kind']} queries of each kind)", "",
              "| format | text queries | image queries | all |", "| --- | ---: | ---: | ---: |"]
    recalls = result["recall_at_10"]
    for fmt in recalls["all"]:
        lines.append(f"| {fmt} | {recalls['text queries'][fmt]:.3f} | {recalls['image queries'][fmt]:.3f} | "
                     f"{recalls['all'][fmt]:.3f} |")
    gap, tenth = corpus["median_gap_10th_11th"], corpus["median_cosine_10th_neighbour"]
    lines += ["", f"Largest |component| in the corpus: {corpus['largest_component']:.3f}; share of components "
                  f"int8 clips: {corpus['int8_clipped_share']:.2e} (at scale 512: "
                  f"{corpus['share_clipped_at_scale_512']:.2e}). Median cosine of the 10th neighbour: texts "
                  f"{tenth['texts']:.4f}, images {tenth['images']:.4f}; median gap between the 10th and 11th: "
                  f"texts {gap['texts']:.5f}, images {gap['images']:.5f} (crops of 14 photographs crowd each other), "
                  "while int8's rounding of both vectors moves a cosine by about 0.0016 (its standard deviation: "
                  "steps of 1/256 over a unit vector). Random weights: the formats compare with each other, not "
                  "with a real model's recall.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=smoke_or(3000, 60), help="distinct texts in the corpus")
    parser.add_argument("--images", type=int, default=smoke_or(1000, 30), help="distinct images in the corpus")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = run(args.texts, args.images)
    results_file("formats.json").write_text(json.dumps(result, indent=2))
    results_file("formats.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
