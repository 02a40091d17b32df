"""Load open_clip weights fast: no random initialisation, the checkpoint mapped rather than read and copied.

``open_clip.create_model_and_transforms`` first initialises every parameter
at random (~2 s for ViT-B-32's 151 M on one core), then reads the whole
checkpoint into memory and copies it over them. Here the model is built with
its parameters on torch's ``meta`` device (shapes only, nothing allocated or
drawn), and the checkpoint's tensors, memory-mapped from the file, become the
parameters (``load_state_dict(assign=True)``). Buffers that no checkpoint
holds (the text tower's causal ``attn_mask``) are built by open_clip's own
constructors as usual, since only parameters go to ``meta``.

What is the same as open_clip, and checked in tests/test_loading.py (bitwise,
on the tiny model and on ViT-B-32): the architecture config and QuickGELU
rule, the checkpoint forms ``open_clip.load_checkpoint`` accepts (a plain
state dict, ``{"state_dict": ...}``, ``module.`` prefixes, safetensors, and
its conversions of older and third-party layouts), strict key and shape
checks, the tag's download through open_clip, and the preprocessing.
Architectures this path does not cover (hf-hub:/local-dir: names, timm or
Hugging Face towers, big_vision .npz files) load through open_clip itself.

On CPU the mapping does not outlive the load: prepacking (prepacked.py)
replaces the big matrices with packed copies and the mapped pages they came
from are dropped as it goes (``MappedPages``), which keeps the file's size out
of the peak memory of the load; the remaining tensors are then copied into the
process's own memory. So a checkpoint replaced on disk later cannot change or
fault the served weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import open_clip
import torch
from open_clip.convert import convert_state_dict
from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
from torch import nn
from torch.overrides import TorchFunctionMode

from . import prepacked
from .lean_import import ensure_hub, ensure_timm
from .tokenizer import for_model as tokenizer_for

log = logging.getLogger(__name__)

# Keys of the metadata a converted checkpoint carries in its safetensors header
# (convert.py): what it was converted from, and what loading it must apply.
META_MODEL = "clip_service.model"
META_PRETRAINED = "clip_service.pretrained"
META_QUICK_GELU = "clip_service.quick_gelu"
META_PREPROCESS = "clip_service.preprocess"
# SHA-256 of the weights' bytes (every tensor, by name), so a cache can key on them without hashing the file.
META_WEIGHTS_SHA256 = "clip_service.weights_sha256"

# Prepacking at load uses every core this process may run on (it runs before
# the workers fork, when nothing else competes for them); 8 is plenty.
_LOAD_THREADS = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)

# CLIP_PRECISION's values: the dtype the prepacked matrix products run in (prepacked.py).
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


class ModelLoadError(RuntimeError):
    """The configured weights could not be loaded; the service must not start."""


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


def pretrained_tag_config(model_name: str, pretrained: str) -> dict:
    """open_clip's registry entry for a pretrained tag, or {} when it is a file path."""
    return open_clip.get_pretrained_cfg(model_name, pretrained) or {}


def needs_quick_gelu(model_name: str, pretrained: str) -> bool:
    """Whether the tag's weights were trained with QuickGELU.

    open_clip only *warns* when a plain config (e.g. ``ViT-B-32``, GELU) meets
    QuickGELU weights (``laion400m_e32``), and the vectors come out subtly
    wrong, so the tag's flag is forced onto the model here.
    """
    return bool(pretrained_tag_config(model_name, pretrained).get("quick_gelu", False))


def weights_digest(tensors: dict) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def converted_metadata(path: str) -> dict[str, str]:
    """The clip_service.* entries of a converted checkpoint's header ({} for any other file)."""
    if not str(path).endswith(".safetensors"):
        return {}
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return {k: v for k, v in (f.metadata() or {}).items() if k.startswith("clip_service.")}


def pretrained_label(model_name: str, pretrained: str) -> str:
    """What the service reports as its weights: the tag, the tag a file was converted from, or the file's name.

    A file's directory is nobody's business. A file converted from a tag
    (convert.py) reports that tag, so an image that bakes the converted
    laion400m_e32 still answers ``"pretrained": "laion400m_e32"``.
    """
    if not os.path.isfile(pretrained):
        return pretrained
    try:
        source = converted_metadata(pretrained).get(META_PRETRAINED, "")
    except Exception:  # a label must never fail; the load reports a bad file
        source = ""
    return source if source and pretrained_tag_config(model_name, source) else os.path.basename(pretrained)


def load_model(model_name: str, pretrained: str, device: str, *, cache_dir: str | None = None,
               prepack: bool = True, precision: str = "fp32") -> LoadedModel:
    """Build the model from a pretrained tag or a checkpoint file; never fall back to random weights.

    ``device`` is resolved already (see ``resolve_device``). Every failure is
    a one-line ``ModelLoadError``. ``precision`` ``bf16`` runs the prepacked
    products in bfloat16 (CPU only: elsewhere, or unprepacked, fp32 with a warning);
    ``auto`` runs bf16 where the CPU has it, fp32 elsewhere (no warning: that is what it asks).
    """
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
        if _fast_path_covers(model_name, pretrained):
            loaded = _load_fast(model_name, pretrained, tag_cfg, device, cache_dir, prepack, precision)
        else:
            loaded = _load_with_open_clip(model_name, pretrained, tag_cfg, device, cache_dir, prepack, precision)
    except ModelLoadError:
        raise
    except Exception as exc:  # any failure here means "no usable weights"
        source = "pretrained tag" if tag_cfg else "checkpoint file"
        raise ModelLoadError(
            f"cannot load model {model_name!r} from {source} {pretrained!r}: "
            f"{_short_cause(exc)}. If the model hub is unreachable, download the weights "
            f"elsewhere and set CLIP_PRETRAINED=/path/to/checkpoint.pt "
            f"(with CLIP_MODEL naming its architecture)."
        ) from exc
    return loaded


def _fast_path_covers(model_name: str, pretrained: str) -> bool:
    """open_clip's own towers from a built-in config; the rest goes through open_clip."""
    schema, _ = open_clip.factory.parse_model_name(model_name)
    cfg = open_clip.get_model_config(model_name.replace("/", "-")) if schema is None else None
    return (cfg is not None and "timm_model_name" not in cfg.get("vision_cfg", {})
            and "hf_model_name" not in cfg.get("text_cfg", {})
            and Path(pretrained).suffix not in (".npz", ".npy"))


def _load_fast(model_name, pretrained, tag_cfg, device, cache_dir, prepack, precision) -> LoadedModel:
    seconds = {}
    lap = _Laps()
    if tag_cfg:
        path = _download(tag_cfg, pretrained, cache_dir)
        quick_gelu, preprocess_overlay = bool(tag_cfg.get("quick_gelu", False)), tag_cfg
    else:
        path = pretrained
        quick_gelu, preprocess_overlay = _converted_settings(path, model_name)
    seconds["resolve"] = lap()

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

    preprocess = _set_preprocess(model, preprocess_overlay)
    tokenizer = tokenizer_for(model_name)
    seconds["transforms"] = lap()
    return LoadedModel(model, preprocess, tokenizer, seconds)


def _load_with_open_clip(model_name, pretrained, tag_cfg, device, cache_dir, prepack, precision) -> LoadedModel:
    started = time.perf_counter()
    ensure_timm()
    ensure_hub()
    if tag_cfg:
        quick_gelu, overlay = bool(tag_cfg.get("quick_gelu", False)), {}  # open_clip applies a tag's own
    else:
        quick_gelu, overlay = _converted_settings(pretrained, model_name)
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=pretrained, device=device, force_quick_gelu=quick_gelu,
        cache_dir=cache_dir or None, **preprocess_arguments(overlay))
    model.eval().requires_grad_(False)
    if prepack and device == "cpu":
        prepacked.prepack(model, threads=_LOAD_THREADS, dtype=PRECISIONS[precision])
    tokenizer = tokenizer_for(model_name)
    return LoadedModel(model, preprocess, tokenizer, {"open_clip": time.perf_counter() - started})


def _download(tag_cfg: dict, pretrained: str, cache_dir: str | None) -> str:
    """The tag's weights file, through open_clip's own download (and cache)."""
    ensure_hub()
    try:
        # Looked up on open_clip.factory at call time, as create_model does.
        path = open_clip.factory.download_pretrained(tag_cfg, cache_dir=cache_dir or None)
    except Exception as exc:
        raise RuntimeError(f"Failed to download weights for tag '{pretrained}': {exc}") from exc
    if not path:
        raise RuntimeError(f"open_clip has no weights file for tag '{pretrained}'")
    return path


def _converted_settings(path: str, model_name: str) -> tuple[bool, dict]:
    """(quick_gelu, preprocess overlay) recorded by convert.py; (False, {}) for any other file."""
    meta = converted_metadata(path)
    if not meta:
        return False, {}
    converted_for = meta.get(META_MODEL)
    if converted_for and converted_for != model_name:
        raise ModelLoadError(
            f"checkpoint file {os.path.basename(path)!r} holds {converted_for!r} weights "
            f"({meta.get(META_PRETRAINED, 'unknown source')}), not {model_name!r}: set CLIP_MODEL={converted_for}, "
            f"or CLIP_PRETRAINED to weights of {model_name}")
    overlay = json.loads(meta.get(META_PREPROCESS) or "{}")
    for key in ("mean", "std"):  # JSON lists back to the tuples open_clip's registry holds
        if isinstance(overlay.get(key), list):
            overlay[key] = tuple(overlay[key])
    return meta.get(META_QUICK_GELU) == "1", overlay


def preprocess_arguments(overlay: dict) -> dict:
    """Preprocessing settings as ``create_model_and_transforms`` arguments (it applies a tag's, not a file's)."""
    names = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation",
             "resize_mode": "image_resize_mode"}
    return {names[k]: overlay[k] for k in names if overlay.get(k) is not None}


def build_empty(model_name: str, *, quick_gelu: bool) -> nn.Module:
    """open_clip's model for ``model_name`` with every parameter on ``meta`` (as ``create_model`` picks it)."""
    cfg = open_clip.get_model_config(model_name.replace("/", "-"))
    if cfg is None:
        raise RuntimeError(f"Model config for '{model_name}' not found in built-ins")
    if quick_gelu:
        cfg["quick_gelu"] = True
    model_class = open_clip.CLIP
    if cfg.pop("custom_text", False):
        model_class = open_clip.CoCa if "multimodal_cfg" in cfg else open_clip.CustomTextCLIP
    with parameters_on_meta():
        return model_class(**cfg, cast_dtype=None)


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Put each ``nn.Parameter`` on ``meta`` as a module registers it, and skip its initialisers; buffers stay real.

    Parameters get no memory and no random draw, while buffers computed in
    constructors (the causal mask) keep their values. Initialisers are skipped
    rather than run on ``meta`` because torch runs some of those (``normal_``)
    through Python reference code that imports the whole compiler stack
    (~1 s) on first use. The same idea as accelerate's
    ``init_empty_weights(include_buffers=False)``, in a few lines rather than a
    dependency that costs more import time than it saves.
    """
    register = nn.Module.register_parameter

    def register_on_meta(module, name, param):
        register(module, name, param)
        if type(param) is nn.Parameter and not param.is_meta:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_on_meta
    try:
        with _SkipInitialisersOnMeta():
            yield
    finally:
        nn.Module.register_parameter = register


class _SkipInitialisersOnMeta(TorchFunctionMode):
    """Return a ``meta`` tensor untouched from ``torch.nn.init`` and the in-place fills (nothing to fill)."""

    _FILLS = frozenset({"normal_", "uniform_", "fill_", "zero_", "copy_", "random_", "bernoulli_",
                        "exponential_", "log_normal_", "cauchy_", "geometric_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
        if (isinstance(target, torch.Tensor) and target.is_meta
                and (getattr(func, "__module__", None) == "torch.nn.init"
                     or getattr(func, "__name__", None) in self._FILLS)):
            return target
        return func(*args, **kwargs)


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, mapped from the file; the same unwrapping as open_clip's ``load_state_dict``."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        checkpoint = load_file(path, device="cpu")  # mapped, not read
    else:
        with open(path, "rb") as f:
            # Only torch.save's zip format can be mapped; older files are read.
            mappable = f.read(4) == b"PK\x03\x04"
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mappable)
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        state_dict = checkpoint["state_dict"]
    elif isinstance(checkpoint, torch.jit.ScriptModule):
        state_dict = checkpoint.state_dict()
        for key in ("input_resolution", "context_length", "vocab_size"):
            state_dict.pop(key, None)
    else:
        state_dict = checkpoint
    if not isinstance(state_dict, dict) or not state_dict:
        raise RuntimeError(f"{os.path.basename(path)} holds no state dict")
    if next(iter(state_dict)).startswith("module"):
        state_dict = {k[7:]: v for k, v in state_dict.items()}
    return state_dict


def fit_state_dict(model: nn.Module, state_dict: dict) -> dict:
    """open_clip's ``load_checkpoint`` adjustments, then each tensor in the dtype the model holds."""
    state_dict = convert_state_dict(model, state_dict)
    if "positional_embedding" in state_dict and not hasattr(model, "positional_embedding"):
        state_dict = convert_to_custom_text_state_dict(state_dict)
    for name in ("logit_scale", "logit_bias"):
        target = getattr(model, name, None)
        if name in state_dict and target is not None and target.ndim != state_dict[name].ndim:
            state_dict[name] = state_dict[name].reshape(target.shape)
    if "logit_bias" not in state_dict and getattr(model, "logit_bias", None) is not None:
        state_dict["logit_bias"] = torch.zeros_like(state_dict["logit_scale"])
    position_ids = "text.transformer.embeddings.position_ids"
    if position_ids in state_dict and not hasattr(model, position_ids):
        del state_dict[position_ids]
    _check_fits(model, state_dict, shapes=False)  # before the resizing, which asserts on a foreign layout
    resize_pos_embed(state_dict, model)
    resize_text_pos_embed(state_dict, model)
    _check_fits(model, state_dict, shapes=True)
    # load_state_dict copies into the model's dtype; assigning does not, so cast first.
    expected = model.state_dict(keep_vars=True)
    return {k: v.to(expected[k].dtype) if k in expected and v.dtype != expected[k].dtype else v
            for k, v in state_dict.items()}


def _check_fits(model: nn.Module, state_dict: dict, *, shapes: bool) -> None:
    """One line saying how the checkpoint differs from the architecture (load_state_dict's runs for pages)."""
    expected = model.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    reshaped = [k for k in expected if shapes and k in state_dict
                and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or reshaped:
        example = (missing or unexpected or reshaped)[0]
        raise RuntimeError(
            f"the checkpoint does not fit this architecture ({len(missing)} tensors missing, "
            f"{len(unexpected)} unexpected, {len(reshaped)} of another shape, such as {example!r})")


class MappedPages:
    """Where this process maps a file, to hand back pages of tensors in it that are no longer used.

    ``madvise(MADV_DONTNEED)`` on a file mapping only drops the process's
    copy of the page: a later read maps it from the file again, so releasing
    is never wrong, only slower if the tensor were read again. It is applied
    only to whole pages of tensors that lie inside a mapping of this file;
    anonymous memory (where it would zero the data) is never touched.
    Through ctypes because torch and safetensors own these mappings and
    expose no such call.
    """

    _PAGE = os.sysconf("SC_PAGE_SIZE")
    _MADV_DONTNEED = 4  # Linux
    _madvise = None

    def __init__(self, path: str):
        real = os.path.realpath(path)
        self.ranges = []
        if not os.path.exists("/proc/self/maps"):  # not Linux: nothing is released
            return
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].rstrip("\n") == real:
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    self.ranges.append((start, end))
        if self.ranges:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            self._madvise = libc.madvise
            self._madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)

    def release(self, tensors: list[torch.Tensor]) -> None:
        """Drop the pages that lie wholly inside ``tensors`` (each contiguous) and inside the file's mapping."""
        if self._madvise is None:
            return
        for tensor in tensors:
            if tensor.device.type != "cpu" or not tensor.is_contiguous():
                continue
            start = tensor.data_ptr()
            end = start + tensor.numel() * tensor.element_size()
            if not any(low <= start and end <= high for low, high in self.ranges):
                continue
            first, last = -(-start // self._PAGE) * self._PAGE, end // self._PAGE * self._PAGE
            if last > first:
                self._madvise(first, last - first, self._MADV_DONTNEED)


def own_tensors(model: nn.Module) -> None:
    """Copy every parameter and buffer into the process's own memory, releasing the file mapping."""
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is not None:
                param.data = param.data.clone()
        for name, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[name] = buffer.clone()


def _set_preprocess(model: nn.Module, overlay: dict) -> Callable:
    """The inference transform ``create_model_and_transforms`` returns, with the tag's settings."""
    cfg = merge_preprocess_dict(asdict(PreprocessCfg()), overlay)
    visual = getattr(model, "visual", None)
    if visual is not None and hasattr(visual, "image_size"):
        cfg["size"] = visual.image_size
    open_clip.set_model_preprocess_cfg(model, cfg)
    return image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)


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


def _short_cause(exc: BaseException) -> str:
    """The first sentence of an exception message: libraries' full messages run for paragraphs."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    sentence = text.split(". ")[0]
    return sentence if len(sentence) <= 200 else sentence[:197] + "..."
