"""open_clip's image preprocessing with the resize done by torch on 8-bit pixels (for CLIP_PRECISION=bf16).

open_clip resizes through Pillow: ~2.8 ms for a 640x480 photo on these
machines, a quarter of the service's own work per image outside the model.
torch's antialiased bicubic resize of 8-bit pixels uses Pillow's filter and
rounding and takes ~0.6 ms; its pixels differ from Pillow's by at most 1 of
255 (at a few in a thousand), which moves a vector by ~1e-5 (ViT-B-32):
nothing beside bf16's ~1e-3, so only bf16 uses it, and fp32 keeps open_clip's
pixels exactly. The crop, the scaling to [0, 1] and the normalisation are
open_clip's own steps on the same 8-bit values.

Only open_clip's standard evaluation pipeline (resize, centre crop, RGB,
to-tensor, normalise) is taken over, and only after both paths agree on a
downscaled and an upscaled probe image; an image in another mode than RGB
(Pillow resizes RGBA premultiplied, for one) goes through open_clip's own.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch
from open_clip.transform import MaybeConvertMode, MaybeToTensor
from PIL import Image
from torch.nn import functional as F
from torchvision.transforms import CenterCrop, InterpolationMode, Normalize, Resize
from torchvision.transforms import functional as TF

try:  # torchvision's own rule for the resized size, so both paths resize to the same size by construction
    from torchvision.transforms.functional import _compute_resized_output_size
except ImportError:  # private: a torchvision without it keeps open_clip's preprocessing
    _compute_resized_output_size = None

log = logging.getLogger(__name__)

# open_clip's evaluation pipeline (image_transform_v2 with its default "shortest" resize mode).
_STANDARD = [Resize, CenterCrop, MaybeConvertMode, MaybeToTensor, Normalize]
# Both paths must give the same normalised pixels to within this many 8-bit steps (scaled by 1/std).
_STEPS = 1.01


class TorchResizePreprocess:
    """A callable like open_clip's transform for one PIL image, resizing 8-bit pixels with torch."""

    def __init__(self, original: Callable, resize: Resize, crop: CenterCrop, normalize: Normalize):
        self.original = original
        self.resize, self.crop, self.normalize = resize, crop, normalize

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":
            return self.original(image)
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # 8-bit, channels first (a copy)
        height, width = pixels.shape[1:]
        size = _compute_resized_output_size((height, width), _as_list(self.resize.size), self.resize.max_size)
        if list(size) != [height, width]:
            # The 8-bit kernel wants channels last in memory (else it copies) and a batch dimension.
            pixels = pixels[None].contiguous(memory_format=torch.channels_last)
            pixels = F.interpolate(pixels, size=size, mode="bicubic", antialias=True, align_corners=False)[0]
        pixels = TF.center_crop(pixels, list(self.crop.size))
        return self.normalize(pixels.float().div_(255))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.original!r})"


def _as_list(size) -> list[int]:
    return [size] if isinstance(size, int) else list(size)


def torch_resize_preprocess(original: Callable) -> TorchResizePreprocess | None:
    """The faster equivalent of ``original`` (open_clip's eval transform), or None where there is none.

    None unless ``original`` is the standard pipeline with a bicubic
    antialiased resize and the two paths agree on the probe images.
    """
    steps = list(getattr(original, "transforms", ()))
    if _compute_resized_output_size is None or [type(step) for step in steps] != _STANDARD:
        return None
    resize, crop, convert, _, normalize = steps
    if resize.interpolation != InterpolationMode.BICUBIC or resize.antialias is False or convert.mode != "RGB":
        return None
    fast = TorchResizePreprocess(original, resize, crop, normalize)
    tolerance = _STEPS / 255 / min(normalize.std)
    for width, height in ((640, 480), (150, 200)):  # a downscale and an upscale
        probe = _probe_image(width, height)
        difference = (fast(probe) - original(probe)).abs().max().item()
        if difference > tolerance:
            log.warning("torch's resize differs from Pillow's by %.4f on a %dx%d probe; images keep open_clip's "
                        "preprocessing", difference, width, height)
            return None
    return fast


def _probe_image(width: int, height: int) -> Image.Image:
    """Smooth gradients with noise and sharp edges: what a photo has, in a fixed pattern."""
    rng = np.random.default_rng(width * height)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    base[(x // 16 + y // 16) % 2 == 0] *= 0.5
    noisy = base + rng.normal(0, 12, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
