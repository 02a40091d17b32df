"""Hugging Face tokenizers (SigLIP's, SigLIP2's) from a local directory, on the ``tokenizers`` package alone.

open_clip reaches a model's ``hf_tokenizer_name`` through
``transformers.AutoTokenizer`` (its ``HFTokenizer``): a large package that the
service would import only to hand a ``tokenizer.json`` to the ``tokenizers``
package, which does all the work. ``HubTokenizer`` loads the same files with
``tokenizers`` alone and calls it as ``HFTokenizer`` does (open_clip's text
cleaning, truncation to the context, padding to its full length), applying
what ``transformers`` reads from ``tokenizer_config.json`` (the padding token
and side, the truncation side); the special tokens around a text are the
``tokenizer.json``'s own template, as transformers 5 applies it.
tests/test_families.py checks the ids equal ``HFTokenizer``'s on a fixed text
set, for both kinds (T5's unigram, Gemma's BPE), wherever ``transformers`` is
installed (it is not a dependency: 5.25 gave the same ids when this was written). Where the files come from (``CLIP_TOKENIZER``,
a ``local-dir:`` model, the hub) is tokenizer.py's concern.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from . import private_apis
from .errors import ModelLoadError

# What a tokenizer directory holds; only tokenizer.json is required.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class HubTokenizer:
    """open_clip's ``HFTokenizer`` (standard mode) for the tokenizer files in ``directory``."""

    def __init__(self, directory: str | Path, *, context_length: int, clean: str = "whitespace",
                 strip_sep_token: bool = False):
        from tokenizers import Tokenizer

        directory = Path(directory)
        if private_apis.get_clean_fn is None:
            raise ModelLoadError("open_clip's text cleaning for Hugging Face tokenizers is missing in this release "
                                 "(see clip_service/model/private_apis.py); install the pinned open_clip")
        self.directory = directory
        self.context_length = context_length
        self.clean_fn = private_apis.get_clean_fn(clean)
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        config = _read_json(directory / "tokenizer_config.json")
        special = {**_read_json(directory / "special_tokens_map.json"), **config}
        pad = _content(special.get("pad_token"))
        if pad is None:
            raise ModelLoadError(f"the tokenizer in {directory} names no padding token, which open_clip pads "
                                 f"texts to {context_length} tokens with")
        self.pad_token_id = self._id(pad)
        sep = _content(special.get("sep_token"))
        self.sep_token_id = self._id(sep) if strip_sep_token and sep else None
        self.tokenizer.enable_truncation(context_length, stride=0, strategy="longest_first",
                                         direction=config.get("truncation_side", "right"))
        self.tokenizer.enable_padding(direction=config.get("padding_side", "right"), pad_id=self.pad_token_id,
                                      pad_type_id=0, pad_token=pad, length=context_length)

    def _id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ModelLoadError(f"the tokenizer in {self.directory} names {token!r}, which its vocabulary lacks")
        return token_id

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.LongTensor:
        if isinstance(texts, str):
            texts = [texts]
        if context_length not in (None, self.context_length):
            raise ValueError(f"this tokenizer pads to {self.context_length} tokens, not {context_length}")
        encodings = self.tokenizer.encode_batch([self.clean_fn(text) for text in texts], add_special_tokens=True)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long).reshape(len(texts), self.context_length)
        if self.sep_token_id is not None:
            ids = torch.where(ids == self.sep_token_id, torch.zeros_like(ids), ids)
        return ids


def has_tokenizer(directory: str | Path) -> bool:
    """Whether ``directory`` holds a tokenizer HubTokenizer can load."""
    return (Path(directory) / "tokenizer.json").is_file()


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _content(token) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken's dict."""
    return token.get("content") if isinstance(token, dict) else token
