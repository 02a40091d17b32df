"""CLIP tokenization with bounded cost: open_clip's tokens for ordinary text, for any text.

open_clip's ``SimpleTokenizer`` byte-pair-encodes every word of a text before
it truncates to the context (77 tokens); its merge loop is quadratic in a
word's length (one 30,000-letter word takes ~13 s on a 2 vCPU machine) and it
caches every distinct word for the life of the process. Both let one request
wedge a worker, so the embedder wraps it here. Hand-written because open_clip
offers no bound; the merges themselves are still open_clip's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import open_clip
import torch
from open_clip import SimpleTokenizer

from . import families, private_apis
from .errors import ModelLoadError, UnsupportedModelError, short_cause
from .hub_tokenizer import TOKENIZER_FILES, HubTokenizer, has_tokenizer

log = logging.getLogger(__name__)

# Longest word (in UTF-8 bytes) that is byte-pair-encoded whole; a longer one
# is cut here first. No CLIP vocabulary token is longer than 32 bytes, so such
# a word alone is many tokens, and ordinary words are far shorter.
MAX_WORD_BYTES = 256
# open_clip keeps every word it has seen; start afresh past this many.
MAX_CACHED_WORDS = 20_000


def for_model(model_name: str, *, directory: str = "", cache_dir: str | None = None):
    """The model's tokenizer: open_clip's CLIP tokenizer, bounded; or its Hugging Face tokenizer (SigLIP's).

    A config whose text tower names a Hugging Face tokenizer (``hf_tokenizer_name``)
    gets it from ``directory`` (``CLIP_TOKENIZER``), a ``local-dir:`` model's own
    folder, or else the model hub (``hub_tokenizer_files``); one line when none has it.
    Any other gets ``bounded(open_clip.get_tokenizer(model_name))``, without
    building a second vocabulary when it can: building a ``SimpleTokenizer``
    reads and indexes the 49,408-token BPE vocabulary in Python (~0.07 s of each
    cold start); ``import open_clip`` has already built one with the default
    arguments, which is what ``get_tokenizer`` builds for a built-in config whose
    text tower names no other tokenizer, no tokenizer arguments and the default
    context (CLIP's and most others). Such a config gets that one.
    """
    config = families.model_config(model_name)
    text = (config or {}).get("text_cfg", {})
    if text.get("hf_tokenizer_name"):
        return hub_tokenizer_for(model_name, text, directory=directory, cache_dir=cache_dir)
    if directory and has_tokenizer(directory):
        log.info("CLIP_TOKENIZER is not used: %s uses open_clip's own CLIP tokenizer", model_name)
    shared = private_apis.shared_tokenizer()
    default_context = private_apis.DEFAULT_CONTEXT_LENGTH
    if (type(shared) is SimpleTokenizer and config is not None and ":" not in model_name
            and "siglip" not in model_name.lower()
            and not {"hf_tokenizer_name", "tokenizer_kwargs", "tokenizer_mode"} & text.keys()
            and text.get("context_length", default_context) == shared.context_length == default_context):
        return bounded(shared)
    if model_name.startswith("hf-hub:"):
        private_apis.ensure_hub()  # open_clip reads such a model's config from the hub
    return bounded(open_clip.get_tokenizer(model_name))


def hub_tokenizer_for(model_name: str, text_cfg: dict, *, directory: str = "", cache_dir: str | None = None):
    """The Hugging Face tokenizer a text config names, as open_clip's ``HFTokenizer`` would call it."""
    name = text_cfg["hf_tokenizer_name"]
    kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
    unknown = set(kwargs) - {"clean", "strip_sep_token"}
    if text_cfg.get("tokenizer_mode") or unknown:
        raise UnsupportedModelError(
            f"CLIP_MODEL={model_name}'s tokenizer needs {text_cfg.get('tokenizer_mode') or sorted(unknown)}, which "
            f"clip-service does not implement; it serves {families.SUPPORTED}")
    schema, identifier = private_apis.parse_model_name(model_name)
    if directory:
        source, where = directory, f"CLIP_TOKENIZER={directory}"
    elif schema == "local-dir":
        source, where = identifier, f"the model's folder {identifier}"
    else:
        source, where = hub_tokenizer_files(name, cache_dir), "the model hub"
    if not has_tokenizer(source):
        raise ModelLoadError(f"{model_name}'s tokenizer ({name}) is not in {where}: no tokenizer.json there "
                             f"(python -m clip_service.model.convert --tokenizer-dir DIR writes one)")
    try:
        return HubTokenizer(source, context_length=text_cfg.get("context_length", 64), **kwargs)
    except ModelLoadError:
        raise
    except Exception as exc:  # a file the tokenizers package cannot read
        raise ModelLoadError(f"{model_name}'s tokenizer in {where} cannot be loaded: {short_cause(exc)}") from exc


def hub_tokenizer_files(name: str, cache_dir: str | None = None) -> str:
    """The directory of ``name``'s tokenizer files, downloaded from the model hub (or found in its cache).

    Raise ModelLoadError in one line when the hub cannot be reached and nothing is cached:
    it is the tokenizer that is missing, not the weights, and CLIP_TOKENIZER is the way round.
    """
    private_apis.ensure_hub()
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(name, "tokenizer.json", cache_dir=cache_dir or None)
        for optional in TOKENIZER_FILES[1:]:
            try:
                hf_hub_download(name, optional, cache_dir=cache_dir or None)
            except Exception:  # noqa: BLE001 - optional files; the tokenizer.json decides
                pass
    except Exception as exc:
        raise ModelLoadError(
            f"the tokenizer {name!r} is not on this machine and the model hub cannot be reached "
            f"({short_cause(exc)}); set CLIP_TOKENIZER to a directory holding its tokenizer.json "
            f"(python -m clip_service.model.convert --tokenizer-dir DIR writes one)") from exc
    return str(Path(path).parent)


def bounded(tokenizer):
    """Wrap open_clip's ``SimpleTokenizer``; return any other tokenizer unchanged."""
    if type(tokenizer) is not SimpleTokenizer:
        return tokenizer
    if not private_apis.SIMPLE_TOKENIZER_INTERNALS:
        raise ModelLoadError(f"open_clip {open_clip.__version__}'s SimpleTokenizer lacks what clip_service bounds "
                             f"its cost with (see clip_service/model/private_apis.py); install the pinned open_clip")
    return BoundedTokenizer(tokenizer) if tokenizer.reduction_fn is None else tokenizer


class BoundedTokenizer:
    """``SimpleTokenizer`` that stops encoding a text once the context is full.

    Tokens are produced word by word exactly as open_clip does, so any text
    whose words are shorter than ``MAX_WORD_BYTES`` gets open_clip's tokens,
    truncated to the context as CLIP does (start token, the first
    ``context_length - 2`` tokens, end token).
    """

    def __init__(self, inner: SimpleTokenizer):
        self.inner = inner
        self.context_length = inner.context_length
        # What a new SimpleTokenizer's cache holds: its special tokens (the inner one may be shared, and used).
        self._fresh_cache = {inner.decoder[i]: inner.decoder[i] for i in inner.all_special_ids}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, text: str, limit: int | None = None) -> list[int]:
        """BPE token ids of ``text``, stopping once there are at least ``limit``."""
        inner = self.inner
        ids: list[int] = []
        for match in inner.pat.finditer(inner.clean_fn(text)):
            # ftfy's cleaning already replaced lone surrogates; "replace" is for a cleaner that does not.
            word = match.group().encode("utf-8", "replace")[:MAX_WORD_BYTES]
            units = "".join(inner.byte_encoder[b] for b in word)
            ids.extend(inner.encoder[piece] for piece in inner.bpe(units).split(" "))
            if limit is not None and len(ids) >= limit:
                break
        return ids

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.LongTensor:
        if isinstance(texts, str):
            texts = [texts]
        context_length = context_length or self.context_length
        inner = self.inner
        result = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            body = self.encode(text, limit=context_length - 2)[:context_length - 2]
            tokens = [inner.sot_token_id, *body, inner.eot_token_id]
            result[row, :len(tokens)] = torch.tensor(tokens)
        if len(inner.cache) > MAX_CACHED_WORDS:
            inner.cache = dict(self._fresh_cache)
        return result


def token_count(tokens: torch.Tensor) -> int:
    """CLIP tokens in ``tokens`` (rows from a tokenizer) as the model sees them: start and end tokens included.

    Padding (id 0) only follows the end token, so a text's length is the
    position of its last non-zero id plus one (0 is also a rare real token).
    """
    if not len(tokens):
        return 0
    positions = torch.arange(1, tokens.shape[1] + 1)
    return int(((tokens != 0) * positions).max(dim=1).values.sum())
