"""Which open_clip families the service serves, and what each one needs: its scores, preprocessing and preparation.

A family is told by its architecture config, not its name: a ``logit_bias``
(SigLIP, SigLIP2) means sigmoid scores; a timm image tower needs timm;
re-parameterisable blocks (MobileCLIP's and MobileCLIP2's FastViT towers) are
folded before serving; a text tower that names a Hugging Face tokenizer gets
it through hub_tokenizer.py. What cannot be served (CoCa, a model without an
image tower, a Hugging Face text model) is refused at start in one line.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import open_clip
from torch import nn

from . import private_apis
from .errors import UnsupportedModelError

log = logging.getLogger(__name__)

# What the refusal of any other model names.
SUPPORTED = ("open_clip's dual-encoder models: CLIP (ViT, ResNet and ConvNeXt image towers, QuickGELU or not, "
             "e.g. ViT-B-32, ViT-L-14, RN50, convnext_base), SigLIP and SigLIP2 (e.g. ViT-B-16-SigLIP2), "
             "MobileCLIP and MobileCLIP2 (e.g. MobileCLIP2-S0)")
# /classify's and /rank's scores: softmax over the candidates of logit_scale x cosine (contrastive CLIP), or an
# independent sigmoid(logit_scale x cosine + logit_bias) per candidate (SigLIP's training objective).
SOFTMAX, SIGMOID = "softmax", "sigmoid"
# The preprocessing settings a pretrained tag may carry (open_clip's PreprocessCfg fields less size and mode).
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")


def model_config(model_name: str) -> dict | None:
    """open_clip's architecture config for a built-in name or a ``local-dir:`` model; None for others (hf-hub:)."""
    schema, identifier = private_apis.parse_model_name(model_name) if private_apis.parse_model_name else (None, "")
    if schema == "local-dir":
        path = Path(identifier) / "open_clip_config.json"
        try:
            return json.loads(path.read_text(encoding="utf-8")).get("model_cfg")
        except (OSError, ValueError):
            return None
    if schema is None:
        return open_clip.get_model_config(model_name.replace("/", "-"))
    return None


def refusal(model_name: str, config: dict | None) -> str | None:
    """Why ``model_name`` (with its ``config``) cannot be served, in words; None when it can or is not known yet."""
    if config is None:
        return None
    if "multimodal_cfg" in config:
        what = "a CoCa model (its captioning decoder is not served)"
    elif not config.get("vision_cfg"):
        what = "a model without an image tower"
    elif "hf_model_name" in config.get("text_cfg", {}):
        what = f"a model whose text tower is a Hugging Face model ({config['text_cfg']['hf_model_name']})"
    else:
        return None
    return f"CLIP_MODEL={model_name} is {what}; clip-service serves {SUPPORTED}"


def check_built(model_name: str, model: nn.Module) -> None:
    """Refuse a built model that is not a dual encoder (what ``refusal`` cannot see without a config)."""
    if type(model) not in (open_clip.CLIP, open_clip.CustomTextCLIP) or getattr(model, "visual", None) is None:
        raise UnsupportedModelError(f"CLIP_MODEL={model_name} is an open_clip {type(model).__name__}; "
                                    f"clip-service serves {SUPPORTED}")


def needs_timm(config: dict | None) -> bool:
    return config is None or "timm_model_name" in config.get("vision_cfg", {})


def scores(model: nn.Module) -> str:
    """How zero-shot scores follow the model's training: ``sigmoid`` where it learned a logit bias, else ``softmax``."""
    return SIGMOID if getattr(model, "logit_bias", None) is not None else SOFTMAX


def tagless_preprocessing(model_name: str) -> tuple[dict, list[str]]:
    """The preprocessing every pretrained tag of ``model_name`` shares, and those tags; ({}, []) where they differ.

    A checkpoint file carries no tag, and open_clip then preprocesses with its
    defaults (OpenAI's mean and std, a centre crop), which are not SigLIP's
    (squash, 0.5) nor MobileCLIP2's (no normalisation). Where every tag of the
    architecture agrees, that is the architecture's own preprocessing.
    """
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    settings = [{k: v for k, v in open_clip.get_pretrained_cfg(model_name, tag).items() if k in PREPROCESS_KEYS}
                for tag in tags]
    if not settings or any(s != settings[0] for s in settings[1:]) or not settings[0]:
        return {}, []
    return settings[0], tags


def prepare(model: nn.Module) -> str | None:
    """Re-parameterise the image tower where it has re-parameterisable blocks (MobileCLIP's); what was done, or None.

    MobileCLIP and MobileCLIP2 are trained with parallel branches (MobileOne,
    FastViT) that fold into one convolution each for inference: the same
    function, several times faster (open_clip's README does this with timm's
    ``reparameterize_model`` after loading; tests/test_families.py checks
    1e-4). Done once, before the workers fork, so they share the folded weights.
    """
    if not any(callable(getattr(module, "reparameterize", None)) for module in model.modules()):
        return None
    private_apis.ensure_timm()
    from timm.utils import reparameterize_model

    started = time.perf_counter()
    before = sum(1 for _ in model.modules())
    reparameterize_model(model, inplace=True)
    model.eval().requires_grad_(False)
    return (f"re-parameterised the image tower's branches for inference ({before} modules to "
            f"{sum(1 for _ in model.modules())}, {time.perf_counter() - started:.2f}s)")
