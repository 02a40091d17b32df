"""The CLIP model: load open_clip weights once, turn texts and images into unit vectors.

Only torch, open_clip and numpy live here; the web layer hands in strings and
decoded PIL images and gets numpy arrays back.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from . import families, prepacked, preprocessing
from .batching import Expected, MicroBatcher
from .loading import load_model, resolve_device
from .tags import pretrained_label
from .text_encoding import encode_text_packed, encode_text_trimmed, text_path_refusals

log = logging.getLogger(__name__)


# A request is split across idle runners only into parts at least this big:
# smaller batches lose more to per-pass overhead than they gain from a core. A
# short text is a few rows through the model, so a part needs several; one image
# is already 50 rows (ViT-B-32's patches), so a lone request of 2 images uses 2 cores.
_MIN_SPLIT_PART = {"text": 4, "image": 1}
# Below this many texts, packing saves too little padding to pay for its mask.
_MIN_PACKED_BATCH = 4


class ClipEmbedder:
    """An open_clip model in eval mode with its preprocessing and tokenizer."""

    def __init__(self, model, preprocess, tokenizer, *, model_name: str, pretrained: str,
                 device: str = "cpu", max_batch: int = 64):
        self.model = model.eval().requires_grad_(False)
        self.preprocess, self.tokenizer = preprocess, tokenizer
        # What the vectors are vectors of (the weights' tag, or their checkpoint file).
        self.model_name, self.pretrained = model_name, pretrained
        self.device = device
        self.max_batch = max_batch
        self.dimensions = int(_embed_dim(model, tokenizer))
        # How /classify and /rank score: softmax (contrastive CLIP) or sigmoid (SigLIP), families.py.
        self.scores = families.scores(model)
        # Transformer blocks whose matrix products run through oneDNN (prepacked.py).
        self.prepacked_blocks = sum(isinstance(module, prepacked.PrepackedSelfAttention)
                                    for module in model.modules())
        # fp32 (open_clip's arithmetic), or bf16 where the products were packed in it (CLIP_PRECISION).
        bf16 = any(isinstance(module, prepacked.PrepackedLinear) and module.dtype == torch.bfloat16
                   for module in model.modules())
        self.precision = "bf16" if bf16 else "fp32"
        # bf16 resizes images in torch where the transform is CLIP's standard one (preprocessing.py): 4-5x
        # Pillow's speed, within the bf16 bound; fp32 keeps open_clip's transform and its vectors to 1e-5.
        faster = preprocessing.torch_resize_transform(preprocess) if bf16 else None
        if faster is not None:
            self.preprocess = faster
        # Which text path the architecture allows, decided once, not per forward pass; each one off says why.
        refusals = text_path_refusals(model, tokenizer)
        self._can_trim_text, self._can_pack_text = "trimming" not in refusals, "packing" not in refusals
        if refusals:
            log.info("text %s off for %s: %s; its texts run through open_clip's own encode_text",
                     " and ".join(refusals) + (" are" if len(refusals) > 1 else " is"), model_name,
                     "; ".join(dict.fromkeys(refusals.values())))
        self.load_seconds: float | None = None
        # Called as on_batch(modality, size, seconds) after each forward pass;
        # the web layer hangs its metrics here so this module stays free of them.
        self.on_batch: Callable[[str, int, float], None] | None = None
        # At most `parallel_forwards` passes at once (one per core, see
        # configure()): more only oversubscribe the cores and slow every request.
        self.parallel_forwards = 1
        self._forward_slots = threading.BoundedSemaphore(1)
        self._batchers: dict[str, MicroBatcher] = {}

    @property
    def input_size(self) -> int:
        """The short side, in pixels, of the images the model sees."""
        size = getattr(self.model.visual, "image_size", 224)
        return int(min(size) if isinstance(size, (tuple, list)) else size)

    @property
    def logit_scale(self) -> float:
        """CLIP's learned temperature: logits = logit_scale x cosine (about 100 for trained CLIP)."""
        scale = getattr(self.model, "logit_scale", None)
        return float(scale.exp()) if isinstance(scale, torch.Tensor) else 100.0

    @property
    def logit_bias(self) -> float | None:
        """SigLIP's learned bias (logits = logit_scale x cosine + logit_bias); None for contrastive CLIP."""
        bias = getattr(self.model, "logit_bias", None)
        return float(bias.reshape(-1)[0]) if isinstance(bias, torch.Tensor) else None

    @functools.cached_property
    def pretrained_label(self) -> str:
        """The tag (also that of a file converted from one), or only a checkpoint's file name."""
        return pretrained_label(self.model_name, self.pretrained)

    @classmethod
    def load(cls, model_name: str, pretrained: str, device: str = "auto", *,
             cache_dir: str | None = None, max_batch: int = 64, prepack: bool = True,
             precision: str = "fp32", tokenizer_dir: str = "") -> "ClipEmbedder":
        """Build the model from a pretrained tag or a checkpoint file; never fall back to random weights."""
        started = time.monotonic()
        device = resolve_device(device)
        model, preprocess, tokenizer, stages = load_model(model_name, pretrained, device, cache_dir=cache_dir,
                                                          prepack=prepack, precision=precision,
                                                          tokenizer_dir=tokenizer_dir)
        embedder = cls(model, preprocess, tokenizer, model_name=model_name,
                       pretrained=pretrained, device=device, max_batch=max_batch)
        embedder.load_seconds = time.monotonic() - started
        # Worked out here, once, so forked workers share it instead of each opening the file again.
        embedder.pretrained_label  # noqa: B018
        log.info("loaded model %s (%s) on %s in %.2fs (%d blocks prepacked for oneDNN, %s; %s)", model_name,
                 pretrained, device, embedder.load_seconds, embedder.prepacked_blocks, embedder.precision,
                 ", ".join(f"{stage} {seconds:.2f}s" for stage, seconds in stages.items()))
        return embedder

    def configure(self, *, parallel_forwards: int = 1, batching: bool = False, max_queue: int = 512,
                  window_s: float = 0.0, dwell_s: float = 0.0) -> None:
        """Allow ``parallel_forwards`` passes at once; optionally merge concurrent calls (batching.py)."""
        self.parallel_forwards = parallel_forwards
        self._forward_slots = threading.BoundedSemaphore(parallel_forwards)
        self._batchers = {
            modality: MicroBatcher(lambda payloads, m=modality: self._forward_many(m, payloads),
                                   max_batch=self.max_batch, max_queue=max_queue, window_s=window_s,
                                   runners=parallel_forwards, name=f"{modality}-batcher", dwell_s=dwell_s)
            for modality in ("text", "image")
        } if batching else {}

    def stop(self, timeout: float) -> None:
        """Fail queued batches at once and wait up to ``timeout`` s for the passes under way (batching.py)."""
        deadline = time.monotonic() + timeout
        for batcher in self._batchers.values():
            batcher.stop(max(0.0, deadline - time.monotonic()))

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """CLIP token ids, one row per text, truncated to the context as CLIP does."""
        return self.tokenizer(list(texts))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Return one L2-normalised float32 row per text."""
        return self.embed_tokens(self.tokenize(texts)) if texts else self._empty()

    def embed_tokens(self, tokens: torch.Tensor) -> np.ndarray:
        """Return one L2-normalised float32 row per row of token ids (from ``tokenize``)."""
        if not len(tokens):
            return self._empty()
        if len(tokens) < 2:
            return self._run("text", tokens)
        # Sort by length so each forward pass (and each runner's share of a
        # split request) pads only to similar lengths; undo the order after.
        order = torch.argsort((tokens != 0).sum(dim=-1), stable=True)
        vectors = self._run("text", tokens[order])
        restored = np.empty_like(vectors)
        restored[order.numpy()] = vectors
        return restored

    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        """The model's input for one RGB image (resize, crop, normalise); thread-safe."""
        return self.preprocess(image)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Return one L2-normalised float32 row per RGB image."""
        if not images:
            return self._empty()
        return self.embed_pixels(torch.stack([self.preprocess(img) for img in images]))

    def expecting_images(self, count: int) -> contextlib.AbstractContextManager:
        """Announce ``count`` images about to come to ``embed_pixels`` (still downloading), for the batcher.

        Busy runners then wait a moment for them rather than start a batch
        without them (batching.py). Pass what this returns to ``embed_pixels``;
        leaving the ``with`` ends the announcement if they never came.
        """
        batcher = self._batchers.get("image")
        return batcher.expect(count) if batcher is not None else contextlib.nullcontext()

    def embed_pixels(self, pixels: torch.Tensor, expected: Expected | None = None) -> np.ndarray:
        """Return one L2-normalised float32 row per preprocessed image (from ``preprocess_image``).

        ``expected``: what ``expecting_images`` returned for these images.
        """
        return self._run("image", pixels, expected) if len(pixels) else self._empty()

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.dimensions), dtype=np.float32)

    def _run(self, modality: str, inputs: torch.Tensor, expected: Expected | None = None) -> np.ndarray:
        batcher = self._batchers.get(modality)
        if batcher is None:
            return self._forward(modality, inputs)
        # Split a big request so idle runners can share it; a busy batcher
        # merges the parts again, so nothing is lost when they are not idle.
        pieces = min(self.parallel_forwards, len(inputs) // _MIN_SPLIT_PART[modality]) or 1
        parts = torch.tensor_split(inputs, pieces) if pieces > 1 else (inputs,)
        results = batcher.submit_many([(part, len(part)) for part in parts], expected=expected)
        return results[0] if len(results) == 1 else np.concatenate(results)

    def _forward_many(self, modality: str, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
        merged = self._forward(modality, inputs[0] if len(inputs) == 1 else torch.cat(list(inputs)))
        bounds = np.cumsum([len(x) for x in inputs])[:-1]
        return np.split(merged, bounds)

    def _forward(self, modality: str, inputs: torch.Tensor) -> np.ndarray:
        encode = self._encode_tokens if modality == "text" else self._encode_pixels
        chunks = []
        for start in range(0, len(inputs), self.max_batch):
            part = inputs[start:start + self.max_batch].to(self.device)
            with self._forward_slots, torch.inference_mode():
                started = time.perf_counter()
                chunks.append(encode(part).float().cpu().numpy())
            if self.on_batch is not None:
                self.on_batch(modality, len(part), time.perf_counter() - started)
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def _encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if len(tokens) >= _MIN_PACKED_BATCH and self._can_pack_text:
            return encode_text_packed(self.model, tokens)
        if self._can_trim_text:
            return encode_text_trimmed(self.model, tokens)
        return self.model.encode_text(tokens, normalize=True)

    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels, normalize=True)

    def probe(self, timeout: float) -> bool:
        """Prove inference works: a tiny real pass, unless every forward slot stays busy past ``timeout`` (wedged)."""
        if not self._forward_slots.acquire(timeout=timeout):
            return False
        try:
            texts, images = self._encode_probe()
        except Exception:
            return False
        finally:
            self._forward_slots.release()
        norms = np.linalg.norm(np.concatenate([texts, images]), axis=1)
        return bool(np.all(np.isfinite(norms)) and np.allclose(norms, 1.0, atol=1e-3))

    def _encode_probe(self) -> tuple[np.ndarray, np.ndarray]:
        """One text and one grey image through the model; the caller holds a forward slot."""
        tokens = self.tokenizer(["warm-up"]).to(self.device)
        pixels = self.preprocess(Image.new("RGB", (32, 32), (127, 127, 127)))[None].to(self.device)
        with torch.inference_mode():
            texts = self._encode_tokens(tokens).float().cpu().numpy()
            images = self._encode_pixels(pixels).float().cpu().numpy()
        return texts, images


def _embed_dim(model, tokenizer) -> int:
    """The length of the model's vectors: its text projection's width, or one text's vector where it has none."""
    for owner in (model, getattr(model, "text", None)):
        proj = getattr(owner, "text_projection", None)
        if isinstance(proj, torch.Tensor):
            return proj.shape[-1]
        if isinstance(proj, torch.nn.Linear):
            return proj.out_features
    with torch.inference_mode():  # a tower without a projection (CustomTextCLIP's HF towers): ask it
        device = next(model.parameters()).device
        return model.encode_text(tokenizer(["a"]).to(device)).shape[-1]

