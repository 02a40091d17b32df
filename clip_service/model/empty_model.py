"""open_clip's model with every parameter on torch's ``meta`` device: nothing allocated, nothing drawn at random.

``open_clip.create_model`` initialises every parameter at random (~2 s for
ViT-B-32's 151 M on one core) only for the checkpoint to overwrite them.
Built here, parameters have shapes and no memory until the checkpoint's
tensors are assigned to them (loading.py); buffers computed in constructors
(the text tower's causal ``attn_mask``) keep their real values.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import open_clip
import torch
from torch import nn

from . import private_apis

# The in-place fills an initialiser may run on a parameter (nothing to fill on meta).
_FILLS = frozenset({"normal_", "uniform_", "fill_", "zero_", "copy_", "random_", "bernoulli_",
                    "exponential_", "log_normal_", "cauchy_", "geometric_"})


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

    Initialisers are skipped rather than run on ``meta`` because torch runs
    some of those (``normal_``) through Python reference code that imports
    the whole compiler stack (~1 s) on first use. The same idea as
    accelerate's ``init_empty_weights(include_buffers=False)``, in a few
    lines rather than a dependency that costs more import time than it saves.
    """
    with private_apis.registering_parameters_with(_register_on_meta), private_apis.function_mode(_skip_on_meta):
        yield


def _register_on_meta(register, module: nn.Module, name: str, param: nn.Parameter | None) -> None:
    if type(param) is nn.Parameter and not param.is_meta:
        param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
    register(module, name, param)


def _skip_on_meta(func, args: tuple, kwargs: dict):
    """Return a ``meta`` tensor untouched from ``torch.nn.init`` and the in-place fills; run anything else."""
    target = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
    if (isinstance(target, torch.Tensor) and target.is_meta
            and (getattr(func, "__module__", None) == "torch.nn.init" or getattr(func, "__name__", None) in _FILLS)):
        return target
    return func(*args, **kwargs)
