"""CLIP tokenization with bounded cost: open_clip's tokens for ordinary text, for any text.

open_clip's ``SimpleTokenizer`` byte-pair-encodes every word of a text before
it truncates to the context (77 tokens); its merge loop is quadratic in a
word's length (one 30,000-letter word takes ~13 s on a 2 vCPU machine) and it
caches every distinct word for the life of the process. Both let one request
wedge a worker, so the embedder wraps it here. Hand-written because open_clip
offers no bound; the merges themselves are still open_clip's.
"""

from __future__ import annotations

from typing import Sequence

import open_clip
import torch
from open_clip import SimpleTokenizer

from . import private_apis
from .errors import ModelLoadError

# Longest word (in UTF-8 bytes) that is byte-pair-encoded whole; a longer one
# is cut here first. No CLIP vocabulary token is longer than 32 bytes, so such
# a word alone is many tokens, and ordinary words are far shorter.
MAX_WORD_BYTES = 256
# open_clip keeps every word it has seen; start afresh past this many.
MAX_CACHED_WORDS = 20_000


def for_model(model_name: str):
    """``bounded(open_clip.get_tokenizer(model_name))``, without building a second vocabulary when it can.

    Building a ``SimpleTokenizer`` reads and indexes the 49,408-token BPE
    vocabulary in Python (~0.07 s of each cold start); ``import open_clip``
    has already built one with the default arguments, which is what
    ``get_tokenizer`` builds for a built-in config whose text tower names no
    other tokenizer, no tokenizer arguments and the default context (CLIP's
    and most others). Such a config gets that one; any other goes through
    ``get_tokenizer``.
    """
    shared = private_apis.shared_tokenizer()
    default_context = private_apis.DEFAULT_CONTEXT_LENGTH
    config = open_clip.get_model_config(model_name) if ":" not in model_name else None
    text = (config or {}).get("text_cfg", {})
    if (type(shared) is SimpleTokenizer and config is not None and "siglip" not in model_name.lower()
            and not {"hf_tokenizer_name", "tokenizer_kwargs", "tokenizer_mode"} & text.keys()
            and text.get("context_length", default_context) == shared.context_length == default_context):
        return bounded(shared)
    return bounded(open_clip.get_tokenizer(model_name))


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
