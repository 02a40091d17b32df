"""Load open_clip weights fast: no random initialisation, the checkpoint mapped rather than read and copied.

``open_clip.create_model_and_transforms`` first initialises every parameter
at random (~2 s for ViT-B-32's 151 M on one core), then reads the whole
checkpoint into memory and copies it over them. Here the model is built with
its parameters on torch's ``meta`` device (empty_model.py), and the
checkpoint's tensors, memory-mapped from the file (checkpoint.py), become the
parameters (``load_state_dict(assign=True)``); on CPU the mapping does not
outlive the load (mapped_pages.py).

What is the same as open_clip, and checked in tests/test_loading.py (bitwise,
on the tiny model and on ViT-B-32): the architecture config and QuickGELU
rule, the checkpoint forms ``open_clip.load_checkpoint`` accepts, strict key
and shape checks, the tag's download through open_clip (tags.py), and the
preprocessing (preprocessing.py). Architectures this path does not cover
(hf-hub:/local-dir: names, Hugging Face text towers, big_vision .npz
files), or a release of torch or open_clip without what it needs
(private_apis.py), load through open_clip itself; so does a timm tower whose
empty build fails (a warning says so).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable, NamedTuple

import open_clip
import torch
from torch import nn

from . import families, prepacked, private_apis
from .checkpoint import fit_state_dict, read_state_dict
from .converted import converted_metadata, converted_settings
from .empty_model import build_empty
from .errors import ModelLoadError, UnsupportedModelError, short_cause
from .mapped_pages import MappedPages, own_tensors
from .preprocessing import preprocess_arguments, set_preprocess
from .tags import download, pretrained_tag_config
from .tokenizer import for_model as tokenizer_for

log = logging.getLogger(__name__)

# Prepacking at load uses every core this process may run on (it runs before
# the workers fork, when nothing else competes for them); 8 is plenty.
_LOAD_THREADS = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)

# CLIP_PRECISION's values: the dtype the prepacked matrix products run in (prepacked.py).
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


class LoadedModel(NamedTuple):
    model: nn.Module
    preprocess: Callable
    tokenizer: Callable
    seconds: dict[str, float]  # time of each stage, for the log and bench/cold_start.py


def resolve_device(device: str) -> str:
    """Map ``auto`` to CUDA when a GPU is present, else CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"CLIP_DEVICE={device} but torch sees no CUDA device")
    return device


def load_model(model_name: str, pretrained: str, device: str, *, cache_dir: str | None = None,
               prepack: bool = True, precision: str = "fp32", tokenizer_dir: str = "") -> LoadedModel:
    """Build the model from a pretrained tag or a checkpoint file; never fall back to random weights.

    ``device`` is resolved already (see ``resolve_device``). Every failure is
    a one-line ``ModelLoadError``. ``precision`` ``bf16`` runs the prepacked
    products in bfloat16 (CPU only: elsewhere, or unprepacked, fp32 with a warning);
    ``auto`` runs bf16 where the CPU has it, fp32 elsewhere (no warning: that is what it asks).
    A family the service does not serve is refused first (``UnsupportedModelError``),
    then the tokenizer is found (``tokenizer_dir``, CLIP_TOKENIZER, for Hugging Face
    tokenizers), before any weights are read.
    """
    refused = families.refusal(model_name, families.model_config(model_name))
    if refused:
        raise UnsupportedModelError(refused)
    try:
        tokenizer = tokenizer_for(model_name, directory=tokenizer_dir, cache_dir=cache_dir)
    except ModelLoadError:
        raise
    except Exception as exc:  # open_clip's get_tokenizer for an hf-hub: name may reach the hub, or transformers
        raise ModelLoadError(f"cannot build the tokenizer of model {model_name!r}: {short_cause(exc)}. An hf-hub: "
                             f"model is read from the hub at start; offline, name its downloaded folder as "
                             f"CLIP_MODEL=local-dir:/path") from exc
    if precision == "auto":
        precision = "bf16" if prepack and device == "cpu" and prepacked.bf16_native() else "fp32"
    elif precision != "fp32" and not (prepack and device == "cpu"):
        log.warning("CLIP_PRECISION=%s applies to oneDNN's prepacked products on CPU; on %s%s the model runs "
                    "in fp32", precision, device, "" if prepack else " without prepacking")
    tag_cfg = pretrained_tag_config(model_name, pretrained)
    if not tag_cfg and not os.path.isfile(pretrained):
        raise ModelLoadError(
            f"cannot load model {model_name!r} with pretrained {pretrained!r}: it is neither a "
            f"pretrained tag open_clip knows for this model nor an existing file. "
            f"Known tags include: {', '.join(open_clip.list_pretrained_tags_by_model(model_name)[:6]) or 'none'}. "
            f"To run offline, set CLIP_PRETRAINED to a local checkpoint path."
        )
    try:
        loaded = None
        if _fast_path_covers(model_name, pretrained):
            try:
                loaded = _load_fast(model_name, pretrained, tag_cfg, device, cache_dir, prepack, precision, tokenizer)
            except Exception as exc:
                if not families.needs_timm(families.model_config(model_name)) or isinstance(exc, ModelLoadError):
                    raise
                # A timm tower the empty build does not cover (the families served are checked in
                # tests/test_families.py): open_clip's own load, which refuses a bad checkpoint itself.
                log.warning("the fast load of %s's timm tower failed (%s); loading through open_clip",
                            model_name, short_cause(exc))
        if loaded is None:
            loaded = _load_with_open_clip(model_name, pretrained, tag_cfg, device, cache_dir, prepack, precision,
                                          tokenizer)
        families.check_built(model_name, loaded.model)
    except ModelLoadError:
        raise
    except Exception as exc:  # any failure here means "no usable weights"
        source = "pretrained tag" if tag_cfg else "checkpoint file"
        raise ModelLoadError(
            f"cannot load model {model_name!r} from {source} {pretrained!r}: "
            f"{short_cause(exc)}. If the model hub is unreachable, download the weights "
            f"elsewhere and set CLIP_PRETRAINED=/path/to/checkpoint.pt "
            f"(with CLIP_MODEL naming its architecture)."
        ) from exc
    return loaded


def _fast_path_covers(model_name: str, pretrained: str) -> bool:
    """A built-in config whose towers are open_clip's or timm's; the rest goes through open_clip.

    A timm image tower (ConvNeXt, SigLIP's ViT, MobileCLIP's FastViT) builds on
    meta like open_clip's own: its initialisers are skipped and the checkpoint
    assigned (bitwise open_clip's load, tests/test_families.py's converter test).
    """
    if not private_apis.FAST_PATH:
        return False
    schema, _ = private_apis.parse_model_name(model_name)
    cfg = open_clip.get_model_config(model_name.replace("/", "-")) if schema is None else None
    return (cfg is not None and "hf_model_name" not in cfg.get("text_cfg", {})
            and Path(pretrained).suffix not in (".npz", ".npy"))


def _file_settings(model_name: str, path: str) -> tuple[bool, dict]:
    """(quick_gelu, preprocess overlay) of a checkpoint file: a converted file's header, else its architecture's."""
    if converted_metadata(path):
        return converted_settings(path, model_name)
    overlay, tags = families.tagless_preprocessing(model_name)
    if overlay:
        log.info("%s is a checkpoint file without a tag: preprocessing as every pretrained tag of %s (%s) does: %s",
                 os.path.basename(path), model_name, ", ".join(tags), overlay)
    return False, overlay


def _prepare(model: nn.Module) -> None:
    done = families.prepare(model)
    if done:
        log.info("%s", done)


def _load_fast(model_name, pretrained, tag_cfg, device, cache_dir, prepack, precision, tokenizer) -> LoadedModel:
    seconds = {}
    lap = _Laps()
    if tag_cfg:
        path = download(tag_cfg, pretrained, cache_dir)
        quick_gelu, preprocess_overlay = bool(tag_cfg.get("quick_gelu", False)), tag_cfg
    else:
        path = pretrained
        quick_gelu, preprocess_overlay = _file_settings(model_name, path)
    seconds["resolve"] = lap()

    if families.needs_timm(families.model_config(model_name)):
        private_apis.ensure_timm()
    model = build_empty(model_name, quick_gelu=quick_gelu)
    seconds["build"] = lap()
    state_dict = fit_state_dict(model, read_state_dict(path))
    model.load_state_dict(state_dict, strict=True, assign=True)
    del state_dict
    left = [name for name, t in _named_tensors(model) if t.is_meta]
    if left:  # a safety net: strict loading should have refused such a checkpoint already
        raise RuntimeError(f"{len(left)} tensors got no value from the checkpoint, such as {left[0]!r}")
    seconds["load"] = lap()

    model.eval().requires_grad_(False)
    _prepare(model)
    if device == "cpu":
        if prepack:
            # The packed copies replace the mapped weights block by block; their
            # mapped pages are dropped as they go, so the file does not add its
            # whole size to the peak memory of the load.
            prepacked.prepack(model, threads=_LOAD_THREADS, on_swapped=MappedPages(path).release,
                              dtype=PRECISIONS[precision])
            seconds["prepack"] = lap()
        own_tensors(model)
    else:
        model.to(device)
    seconds["own"] = lap()

    preprocess = set_preprocess(model, preprocess_overlay)
    seconds["transforms"] = lap()
    return LoadedModel(model, preprocess, tokenizer, seconds)


def _load_with_open_clip(model_name, pretrained, tag_cfg, device, cache_dir, prepack, precision,
                         tokenizer) -> LoadedModel:
    started = time.perf_counter()
    private_apis.ensure_timm()
    private_apis.ensure_hub()
    if tag_cfg:
        quick_gelu, overlay = bool(tag_cfg.get("quick_gelu", False)), {}  # open_clip applies a tag's own
    else:
        quick_gelu, overlay = _file_settings(model_name, pretrained)
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=pretrained, device=device, force_quick_gelu=quick_gelu,
        cache_dir=cache_dir or None, **preprocess_arguments(overlay))
    model.eval().requires_grad_(False)
    _prepare(model)
    if prepack and device == "cpu":
        prepacked.prepack(model, threads=_LOAD_THREADS, dtype=PRECISIONS[precision])
    return LoadedModel(model, preprocess, tokenizer, {"open_clip": time.perf_counter() - started})


def _named_tensors(model: nn.Module):
    yield from model.named_parameters()
    yield from model.named_buffers()


class _Laps:
    """Seconds since the previous call (or since creation)."""

    def __init__(self):
        self._last = time.perf_counter()

    def __call__(self) -> float:
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        return elapsed
