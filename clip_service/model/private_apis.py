"""Every private symbol of torch and open_clip the model layer uses, looked up and checked once, at import.

torch and open_clip promise nothing about these, so an upgrade may rename or
reshape any of them. Each is looked up here and checked for the shape the code
relies on (callable, its parameters, its attributes); one that fails is None
here, is named in ``MISSING`` with what falls back, and is logged once as a
warning. The modules that use them reach them only through this one, and take
the fallback written beside each; where there is none, the service refuses to
start in one line, never with a traceback. tests/test_private_apis.py fails
when one is missing from the pinned releases (torch 2.14.1, open_clip 3.3.0).

Importing this module is what imports open_clip, lean (lean_import.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import logging
from typing import Any, Callable, Iterator

import torch
from torch import nn

from . import lean_import

log = logging.getLogger(__name__)

# Symbol -> what runs instead, for every symbol that is missing or changed.
MISSING: dict[str, str] = {}


def _check(root: Any, path: str, check: Callable[[Any], bool], fallback: str) -> tuple[bool, Any]:
    """(passed, value) of ``root.<path>``; a failure is recorded with its ``fallback`` and logged."""
    try:
        value = functools.reduce(getattr, path.split("."), root)
        ok = bool(check(value))
    except Exception:  # getattr on torch.ops raises more than AttributeError; a signature may not be readable
        value, ok = None, False
    if not ok:
        owner = getattr(root, "__name__", None) or f"{type(root).__module__}.{type(root).__qualname__}"
        MISSING[f"{owner}.{path}"] = fallback
        log.warning("%s.%s is missing or changed in this release: %s", owner, path, fallback)
    return ok, value


def _find(root: Any, path: str, check: Callable[[Any], bool] = callable, *, fallback: str) -> Any:
    """``root.<path>`` when it exists and passes ``check``; else None (recorded in MISSING)."""
    ok, value = _check(root, path, check, fallback)
    return value if ok else None


def _exists(root: Any, path: str, *, fallback: str) -> bool:
    """Whether ``root.<path>`` exists, whatever its value (None included)."""
    return _check(root, path, lambda value: True, fallback)[0]


def _takes(*parameters: str) -> Callable[[Any], bool]:
    """Check: a callable whose signature names ``parameters``."""
    return lambda value: callable(value) and set(parameters) <= inspect.signature(value).parameters.keys()


def _module_class(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, nn.Module)


# --- open_clip, imported lean ------------------------------------------------------------------

# Packages open_clip imports inside ``try/except ImportError``, hidden while it is imported, and the
# name each binds in an open_clip module; ``ensure_timm``/``ensure_hub`` re-run that module to bind it.
_HIDDEN = {"timm": ("open_clip.timm_model", "timm"), "huggingface_hub": ("open_clip.pretrained", "hf_hub_download")}
# torchvision's ops/roi_align.py imports this for a helper only roi_align calls; a stand-in imports the
# compiler stack on first call instead. Checked by the tests only: checking it here would import what the
# stand-in avoids. If torchvision imports more of torch._dynamo, the lean import fails and is done in full.
_DEFERRED = {"torch._dynamo.utils": ("is_compile_supported",)}

open_clip = lean_import.import_lean("open_clip", deferred=_DEFERRED, hidden=tuple(_HIDDEN))
_IN_FULL = "open_clip imported again, in full (timm and the hub client loaded at start, ~1 s more)"
if not all([_exists(open_clip, f"{module.partition('.')[2]}.{name}", fallback=_IN_FULL)
            for module, name in _HIDDEN.values()]):
    open_clip = lean_import.import_in_full("open_clip")


def ensure_timm() -> None:
    """Give open_clip its timm back (for timm image towers); a no-op when it has it or timm is not installed."""
    lean_import.give_back("timm", *_HIDDEN["timm"])


def ensure_hub() -> None:
    """Give open_clip its Hugging Face hub client back (for tag downloads); a no-op when it has it."""
    lean_import.give_back("huggingface_hub", *_HIDDEN["huggingface_hub"])


# --- torch: oneDNN's prepacked matrix products (prepacked.py) -------------------------------------

# The two ops inductor emits when it freezes a CPU model: a weight reordered once into oneDNN's
# blocked layout, and the product with it (with a fused activation).
_NO_PREPACKING = "no oneDNN prepacking: open_clip's own layers run (same vectors, slower on CPU)"
reorder_linear_weight = _find(torch, "ops.mkldnn._reorder_linear_weight", fallback=_NO_PREPACKING)
linear_pointwise = _find(torch, "ops.mkldnn._linear_pointwise.default", fallback=_NO_PREPACKING)
# Whether the CPU multiplies bfloat16 in hardware; either one answering yes is enough for bf16.
is_avx512_bf16_supported = _find(torch, "cpu._is_avx512_bf16_supported", _takes(), fallback=(
    "AVX512-BF16 goes unseen: bf16 only where AMX is seen, fp32 elsewhere (CLIP_PRECISION=bf16 warns)"))
is_amx_tile_supported = _find(torch, "cpu._is_amx_tile_supported", _takes(), fallback=(
    "AMX goes unseen: bf16 only where AVX512-BF16 is seen, fp32 elsewhere (CLIP_PRECISION=bf16 warns)"))

# --- torch: building with parameters on meta (empty_model.py) -------------------------------------

_NO_FAST_PATH = ("no fast path: every model loads through open_clip (random initialisation, then the "
                 "checkpoint copied; slower start, same vectors)")
# Every parameter a constructor makes passes through it (``nn.Module.__setattr__`` calls it): patched,
# process-wide, while the model is built (``registering_parameters_with``).
register_parameter = _find(nn, "Module.register_parameter", _takes("self", "name", "param"),
                           fallback=_NO_FAST_PATH)


@contextlib.contextmanager
def registering_parameters_with(replacement: Callable[..., None]) -> Iterator[None]:
    """Route every ``nn.Module.register_parameter`` in this process through ``replacement(register, module, name,
    param)`` while inside (``register`` is torch's own)."""
    register = nn.Module.register_parameter

    def patched(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        replacement(register, module, name, param)

    nn.Module.register_parameter = patched
    try:
        yield
    finally:
        nn.Module.register_parameter = register


# Lets the initialisers skip the parameters on meta (not in torch.overrides.__all__).
TorchFunctionMode = _find(torch, "overrides.TorchFunctionMode",
                          lambda value: isinstance(value, type) and hasattr(value, "__torch_function__"),
                          fallback="initialisers run on the meta parameters (nothing drawn; ~1 s more at the "
                                   "first load, as torch imports its compiler stack for them)")


def function_mode(handler: Callable[[Callable, tuple, dict], Any]) -> contextlib.AbstractContextManager:
    """Send every torch function called inside to ``handler(func, args, kwargs)``; nothing without TorchFunctionMode."""
    if TorchFunctionMode is None:
        return contextlib.nullcontext()

    class Mode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return handler(func, args, kwargs or {})

    return Mode()


# --- open_clip: what load_checkpoint and create_model_and_transforms do (loading.py) ---------------

# Which names are hf-hub:/local-dir: specs (those load through open_clip).
parse_model_name = _find(open_clip, "factory.parse_model_name", _takes("model_name"), fallback=_NO_FAST_PATH)
# load_checkpoint's conversions of older and third-party layouts, and its resizing of position embeddings.
convert_state_dict = _find(open_clip, "convert.convert_state_dict", _takes("model", "state_dict"),
                           fallback=_NO_FAST_PATH)
convert_to_custom_text_state_dict = _find(open_clip, "model.convert_to_custom_text_state_dict",
                                          _takes("state_dict"), fallback=_NO_FAST_PATH)
resize_pos_embed = _find(open_clip, "model.resize_pos_embed", _takes("state_dict", "model"), fallback=_NO_FAST_PATH)
resize_text_pos_embed = _find(open_clip, "model.resize_text_pos_embed", _takes("state_dict", "model"),
                              fallback=_NO_FAST_PATH)
# The inference transform create_model_and_transforms builds from a tag's preprocessing settings.
PreprocessCfg = _find(open_clip, "transform.PreprocessCfg", lambda value: dataclasses.is_dataclass(value) and {
    "size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color"} <= {
    field.name for field in dataclasses.fields(value)}, fallback=_NO_FAST_PATH)
merge_preprocess_dict = _find(open_clip, "transform.merge_preprocess_dict", _takes("base", "overlay"),
                              fallback=_NO_FAST_PATH)
image_transform_v2 = _find(open_clip, "transform.image_transform_v2", _takes("cfg", "is_train"),
                           fallback=_NO_FAST_PATH)
# Whether the fast path (loading.py) has all it needs.
FAST_PATH = None not in (register_parameter, parse_model_name, convert_state_dict, convert_to_custom_text_state_dict,
                         resize_pos_embed, resize_text_pos_embed, PreprocessCfg, merge_preprocess_dict,
                         image_transform_v2)

# Where create_model finds the download (tests and callers patch it there), looked up at each call.
_factory_download = _find(open_clip, "factory.download_pretrained", _takes("cfg", "cache_dir"),
                          fallback="a tag's file comes through open_clip.download_pretrained (the same function, "
                                   "exported; a patch of open_clip.factory's no longer reaches it)")


def download_pretrained(cfg: dict, cache_dir: str | None) -> str:
    """The file of a tag's registry entry ``cfg``, through open_clip's download and cache."""
    download = open_clip.factory.download_pretrained if _factory_download is not None else open_clip.download_pretrained
    return download(cfg, cache_dir=cache_dir)


# --- open_clip: its transformer blocks (prepacked.py, text_encoding.py) ---------------------------

# The standard block whose layers are swapped for prepacked ones.
ResidualAttentionBlock = _find(open_clip, "transformer.ResidualAttentionBlock", _module_class,
                               fallback="no transformer block is prepacked: open_clip's layers run in every one")
# Fused into the first MLP product as a scaled swish.
QuickGELU = _find(open_clip, "transformer.QuickGELU", _module_class,
                  fallback="QuickGELU is not fused into the product: it runs as its own module")
# The pooling at the end of encode_text, which the trimmed text path reuses.
text_global_pool = _find(open_clip, "transformer.text_global_pool", _takes("x", "text", "pool_type", "eos_token_id"),
                         fallback="texts are neither trimmed nor packed: open_clip's encode_text runs on all 77 "
                                  "positions (same vectors, slower)")

# --- open_clip: its image transform (preprocessing.py) ----------------------------------------------

# The RGB conversion in the inference transform, recognised so bf16 can resize in torch (torch_resize_transform).
MaybeConvertMode = _find(open_clip, "transform.MaybeConvertMode", lambda value: isinstance(value, type),
                         fallback="bf16 images are resized by open_clip's transform (Pillow), not in torch "
                                  "(same vectors as fp32's preprocessing, ~2 ms more per photo)")

# --- open_clip: the tokenizer (tokenizer.py) ------------------------------------------------------

_NO_SHARING = "a model's tokenizer is built by open_clip.get_tokenizer (a second vocabulary, ~0.07 s of start)"
# The SimpleTokenizer ``import open_clip`` builds, shared when get_tokenizer would build the same one.
_shared = _find(open_clip, "tokenizer._tokenizer", lambda value: isinstance(value, open_clip.SimpleTokenizer),
                fallback=_NO_SHARING)
DEFAULT_CONTEXT_LENGTH = _find(open_clip, "tokenizer.DEFAULT_CONTEXT_LENGTH", lambda value: isinstance(value, int),
                               fallback=_NO_SHARING)
# What BoundedTokenizer reads of a SimpleTokenizer to encode word by word and stop at the context.
_TOKENIZER_INTERNALS = ("pat", "clean_fn", "byte_encoder", "encoder", "decoder", "bpe", "cache", "all_special_ids",
                        "sot_token_id", "eot_token_id", "context_length", "reduction_fn")
_UNBOUNDED = "no fallback: a model with open_clip's SimpleTokenizer refuses to start (its cost per text is unbounded)"
_sample = _shared if _shared is not None else open_clip.SimpleTokenizer()
SIMPLE_TOKENIZER_INTERNALS = all([_exists(_sample, name, fallback=_UNBOUNDED) for name in _TOKENIZER_INTERNALS])
del _sample


# The text cleaning open_clip's HFTokenizer applies ("canonicalize" for SigLIP), reused by hub_tokenizer.py.
get_clean_fn = _find(open_clip, "tokenizer.get_clean_fn", _takes("type"),
                     fallback="no fallback: a model with a Hugging Face tokenizer (SigLIP, SigLIP2) refuses to start")


def shared_tokenizer():
    """The SimpleTokenizer ``import open_clip`` built, or None (looked up at each call, as open_clip may swap it)."""
    if _shared is None or DEFAULT_CONTEXT_LENGTH is None:
        return None
    shared = getattr(open_clip.tokenizer, "_tokenizer", None)
    return shared if isinstance(shared, open_clip.SimpleTokenizer) else None
