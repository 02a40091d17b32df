"""Write a checkpoint as the file the service loads fastest: safetensors, with what loading it must apply.

    python -m clip_service.model.convert --model ViT-B-32 laion400m_e32 /opt/models/ViT-B-32.safetensors

SOURCE is a pretrained tag (downloaded through open_clip, like the service
does) or a checkpoint file in any form open_clip accepts. The weights are
loaded by open_clip itself and saved as the model's own state dict:
float tensors, open_clip's key names, nothing to convert at start-up, and
mapped rather than read when the service loads them (loading.py).

A file path carries no tag, so the header records what the tag would have
told the service (``converted.META_*``): the architecture, the source, the
QuickGELU flag (laion400m_e32 was trained with QuickGELU, which the plain
ViT-B-32 config lacks) and the tag's preprocessing. Loading the file applies
them, and refuses it for another CLIP_MODEL. Before it exits, the command
loads the written file the way the service does and checks that its vectors
are bitwise those of open_clip's model from SOURCE; a file that fails is
removed and the exit status is 1.

A model whose tokenizer lives on the model hub (SigLIP's, SigLIP2's) gets it
written too with ``--tokenizer-dir DIR`` (from the hub, or from ``--tokenizer
SRC``, a folder that has it), for ``CLIP_TOKENIZER=DIR`` where the service runs;
the check tokenizes with it. A MobileCLIP's file holds open_clip's own
(un-re-parameterised) weights; the check compares both re-parameterised, as served.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import open_clip
import torch
from PIL import Image
from safetensors.torch import save_file

from . import families
from .converted import (
    META_MODEL,
    META_PREPROCESS,
    META_PRETRAINED,
    META_QUICK_GELU,
    META_WEIGHTS_SHA256,
    converted_metadata,
    weights_digest,
)
from .errors import ModelLoadError
from .hub_tokenizer import TOKENIZER_FILES, HubTokenizer
from .loading import load_model
from .preprocessing import preprocess_arguments
from .private_apis import ensure_hub, ensure_timm
from .tags import pretrained_tag_config
from .tokenizer import for_model as tokenizer_for


def main(argv: list[str] | None = None) -> int:
    """Convert SOURCE to DEST; print one line, return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m clip_service.model.convert", description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a pretrained tag of --model, or a checkpoint file")
    parser.add_argument("dest", help="the file to write (must end in .safetensors)")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip architecture (default: ViT-B-32)")
    parser.add_argument("--tag", help="the pretrained tag a SOURCE file holds the weights of, for its QuickGELU "
                                      "flag and preprocessing (SOURCE itself when it is a tag)")
    parser.add_argument("--cache-dir", help="where open_clip caches a downloaded tag")
    parser.add_argument("--tokenizer-dir", help="also write the model's Hugging Face tokenizer here (SigLIP, "
                                                "SigLIP2), for CLIP_TOKENIZER; nothing for other models")
    parser.add_argument("--tokenizer", default="", help="a folder holding that tokenizer already (as "
                                                        "CLIP_TOKENIZER), instead of the model hub")
    args = parser.parse_args(argv)
    try:
        print(convert(args.model, args.source, args.dest, tag=args.tag, cache_dir=args.cache_dir,
                      tokenizer_dir=args.tokenizer_dir, tokenizer_source=args.tokenizer))
        return 0
    except (ModelLoadError, ValueError) as exc:
        print(f"convert: {exc}", file=sys.stderr)
        return 1


def convert(model_name: str, source: str, dest: str, *, tag: str | None = None, cache_dir: str | None = None,
            tokenizer_dir: str | None = None, tokenizer_source: str = "") -> str:
    """Write ``dest`` from ``source`` and check it; return a one-line summary."""
    if not dest.endswith(".safetensors"):
        raise ValueError(f"{dest} must end in .safetensors (that is how open_clip and the service recognise it)")
    source_tag = source if pretrained_tag_config(model_name, source) else None
    tag = tag or source_tag
    tag_cfg = pretrained_tag_config(model_name, tag) if tag else {}
    if tag and not tag_cfg:
        raise ValueError(f"{tag!r} is not a pretrained tag of {model_name!r}")
    if not source_tag and not os.path.isfile(source):
        raise ValueError(f"{source!r} is neither a pretrained tag of {model_name!r} nor a file")
    if not source_tag and not tag_cfg and converted_metadata(source):
        raise ValueError(f"{source} is a converted file already")
    quick_gelu = bool(tag_cfg.get("quick_gelu", False))
    refused = families.refusal(model_name, families.model_config(model_name))
    if refused:
        raise ValueError(refused)
    # The model's own tokenizer (a Hugging Face one from the hub or tokenizer_source): the check uses it.
    tokenizer = tokenizer_for(model_name, directory=tokenizer_source, cache_dir=cache_dir)
    # A file converted from a file records the preprocessing its architecture's tags share (families.py).
    preprocess = {k: tag_cfg[k] for k in families.PREPROCESS_KEYS if k in tag_cfg} if tag_cfg \
        else families.tagless_preprocessing(model_name)[0]

    ensure_hub()  # open_clip downloads a tag itself here
    ensure_timm()
    try:
        reference, _, reference_preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=source, force_quick_gelu=quick_gelu, cache_dir=cache_dir,
            **preprocess_arguments(preprocess))
    except Exception as exc:
        raise ModelLoadError(f"open_clip cannot load {model_name!r} from {source!r}: {exc}") from exc
    reference = reference.eval().requires_grad_(False)
    metadata = {
        "format": "pt",
        META_MODEL: model_name,
        META_PRETRAINED: tag or os.path.basename(source),
        META_QUICK_GELU: "1" if quick_gelu else "0",
        META_PREPROCESS: json.dumps(preprocess),
    }
    tensors = {name: tensor.contiguous() for name, tensor in reference.state_dict().items()}
    metadata[META_WEIGHTS_SHA256] = weights_digest(tensors)
    partial = dest + ".partial"
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    save_file(tensors, partial, metadata=metadata)
    # safetensors writes 0600; the service may run as another user (the image's
    # ``app``), so give the file the mode any new file gets under the umask.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(partial, 0o666 & ~umask)
    os.replace(partial, dest)

    families.prepare(reference)  # as the service serves it (MobileCLIP's branches folded)
    difference = _compare(model_name, dest, reference, reference_preprocess, tokenizer, tokenizer_source)
    if difference:
        os.remove(dest)
        raise ModelLoadError(f"{dest} does not give open_clip's vectors ({difference}); removed it")
    size_mib = os.path.getsize(dest) / 2**20
    written = ""
    if tokenizer_dir and isinstance(tokenizer, HubTokenizer):
        os.makedirs(tokenizer_dir, exist_ok=True)
        for name in TOKENIZER_FILES:
            if (tokenizer.directory / name).is_file():
                shutil.copyfile(tokenizer.directory / name, os.path.join(tokenizer_dir, name))
        written = f"; its tokenizer in {tokenizer_dir}"
    return (f"wrote {dest} ({size_mib:.0f} MiB): {model_name} from {metadata[META_PRETRAINED]}, "
            f"quick_gelu={quick_gelu}; its vectors are bitwise open_clip's{written}")


def _compare(model_name: str, path: str, reference, reference_preprocess, tokenizer, tokenizer_source: str) -> str:
    """'' when the service's load of ``path`` gives the reference's vectors bit for bit, else what differs."""
    loaded = load_model(model_name, path, "cpu", prepack=False, tokenizer_dir=tokenizer_source)
    tokens = tokenizer(["a photo of a cat", "a diagram"])
    image = Image.new("RGB", (300, 200), (200, 120, 40))
    with torch.inference_mode():
        pairs = {
            "text": (loaded.model.encode_text(tokens, normalize=True), reference.encode_text(tokens, normalize=True)),
            "image": (loaded.model.encode_image(loaded.preprocess(image)[None], normalize=True),
                      reference.encode_image(reference_preprocess(image)[None], normalize=True)),
        }
    return ", ".join(f"{kind} up to {(ours - theirs).abs().max().item():.1e}"
                     for kind, (ours, theirs) in pairs.items() if not torch.equal(ours, theirs))


if __name__ == "__main__":
    sys.exit(main())
