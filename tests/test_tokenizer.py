"""Nothing a user types raises from the tokenizer or wedges it; ordinary text gets open_clip's exact tokens."""

from __future__ import annotations

import random
import string
import time

import numpy as np
import open_clip
import pytest
import torch

from clip_service.model import tokenizer as tokenizer_module
from clip_service.model.tokenizer import BoundedTokenizer, bounded

from .helpers import TINY_MODEL, assert_still_serving, reference_text_vectors

NASTY_TEXTS = {
    "empty": "",
    "spaces": "   ",
    "whitespace": "\t\n\r\x0b\x0c\u00a0\u2028\u3000",
    "emoji": "😀🐈‍⬛👩🏽‍🚀🇫🇷" * 20,
    "nul and controls": "a\x00b\x01\x07\x1b[31mred\x7f\x9b",
    "lone high surrogate": "\ud800",
    "lone low surrogate": "cat \udc00 dog",
    "reversed pair": "\udc00\ud800",
    "one 100,000-character word": "x" * 100_000,
    "one random 100,000-letter word": "".join(random.Random(0).choices(string.ascii_lowercase, k=100_000)),
    "zero-width and bidi": "\u200b\u200d\ufeff\u202e\u2066abc",
    "combining marks": "e" + "\u0301" * 500,
    "special token text": "<start_of_text><end_of_text> a cat",
    "private use and noncharacters": "\ue000\uffff\U0010ffff",
    "mojibake": "cafÃ© Ã¼ber",
    "CJK without spaces": "猫がソファの上で寝ている写真" * 50,
    "long sentence": "a photo of a cat sitting on a sofa " * 300,
}


@pytest.fixture(scope="module")
def open_clip_tokenizer():
    return open_clip.get_tokenizer(TINY_MODEL)


def test_the_embedder_uses_the_bounded_tokenizer(tiny_embedder):
    assert isinstance(tiny_embedder.tokenizer, BoundedTokenizer)


def test_other_tokenizers_are_left_alone():
    other = object()
    assert bounded(other) is other


@pytest.mark.parametrize("name", sorted(NASTY_TEXTS))
def test_nasty_texts_tokenize_quickly_to_one_context(tiny_embedder, name):
    started = time.monotonic()
    tokens = tiny_embedder.tokenizer([NASTY_TEXTS[name]])
    assert time.monotonic() - started < 2.0
    assert tokens.shape == (1, 77)
    assert (tokens[0] != 0).sum() >= 2  # at least the start and end tokens


def test_nasty_texts_embed_to_unit_vectors_over_http(tiny_embedder):
    from clip_service import create_app

    client = create_app({"TESTING": True, "max_text_chars": 100_000, "max_body_bytes": 2_000_000},
                        embedder=tiny_embedder).test_client()
    # Lone surrogates are not text: the service refuses them with a 422 (test_echo_safety.py).
    names = sorted(n for n, text in NASTY_TEXTS.items() if not any("\ud800" <= ch <= "\udfff" for ch in text))
    import json
    body = json.dumps({"texts": [NASTY_TEXTS[n] for n in names]})
    started = time.monotonic()
    response = client.post("/embed/text", data=body, content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert time.monotonic() - started < 10
    vectors = np.asarray(response.get_json()["embeddings"])
    assert vectors.shape == (len(names), 32)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert_still_serving(client)


def test_ordinary_texts_get_open_clips_exact_tokens(tiny_embedder, open_clip_tokenizer):
    rng = random.Random(1)
    words = ["a", "photo", "of", "the", "cat", "dog's", "naïve", "café", "2024", "#tag", "e-mail", "🐈", "猫",
             "don't", "x" * 40, "ÆØÅ", "!!!", "..."]
    texts = list(NASTY_TEXTS.values())
    texts += [" ".join(rng.choice(words) for _ in range(rng.randint(0, 120))) for _ in range(200)]
    texts += ["".join(rng.choice(string.printable) for _ in range(rng.randint(0, 600))) for _ in range(200)]
    texts = [t for t in texts if max((len(w.encode("utf-8", "surrogatepass")) for w in t.split()), default=0) < 200]
    assert torch.equal(tiny_embedder.tokenizer(texts), open_clip_tokenizer(texts))


def test_texts_longer_than_the_context_are_truncated_as_clip_does(client, reference_model):
    long_text = "a photo of a cat sitting on a red sofa next to a window " * 20
    truncated_text = " ".join(long_text.split()[:75])  # one token per word here: the context keeps 75
    body = client.post("/embed/text", json={"texts": [long_text, truncated_text]}).get_json()
    vectors = np.asarray(body["embeddings"])
    assert np.abs(vectors[0] - vectors[1]).max() <= 1e-6
    expected = reference_text_vectors(reference_model, [long_text])
    assert np.abs(vectors[:1] - expected).max() <= 1e-5


def test_the_word_cache_stays_bounded(tiny_checkpoint, monkeypatch):
    from clip_service.model.embedder import ClipEmbedder

    monkeypatch.setattr(tokenizer_module, "MAX_CACHED_WORDS", 50)
    embedder = ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu")
    rng = random.Random(2)
    for _ in range(20):
        embedder.tokenizer([" ".join("".join(rng.choices(string.ascii_lowercase, k=8)) for _ in range(30))])
        assert len(embedder.tokenizer.inner.cache) <= 50 + 30
    # The special tokens survive a reset.
    assert embedder.tokenizer(["a"])[0, 0] == embedder.tokenizer.inner.sot_token_id


def test_a_full_request_of_worst_case_words_stays_fast(tiny_embedder):
    rng = random.Random(3)
    texts = ["".join(rng.choices(string.ascii_lowercase, k=10_000)) for _ in range(64)]
    started = time.monotonic()
    tiny_embedder.tokenizer(texts)
    # open_clip alone takes ~2.6 s per text here (quadratic merges); bounded, it is milliseconds each.
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("model_name, shares", [
    ("ViT-B-32", True), ("ViT-B-32-quickgelu", True), ("ViT-L-14", True), ("RN50", True), (TINY_MODEL, True),
    ("PE-Core-B-16", False), ("coca_ViT-B-32", False)])  # SigLIP's Hugging Face tokenizers: test_families.py
def test_a_models_tokenizer_is_open_clips_and_shares_the_vocabulary_only_when_it_is_the_same(model_name, shares):
    """``for_model`` uses the SimpleTokenizer ``import open_clip`` built only where ``get_tokenizer`` builds the
    same one (the tokens are then compared); otherwise it leaves the choice to ``get_tokenizer``."""
    real = open_clip.get_tokenizer
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(open_clip, "get_tokenizer", lambda name: ("left to open_clip", name))
        ours = tokenizer_module.for_model(model_name)
    if not shares:  # some of these fetch their tokenizer from the model hub: only the choice is checked
        assert ours == ("left to open_clip", model_name)
        return
    shared, theirs = open_clip.tokenizer._tokenizer, real(model_name)
    assert ours.inner is shared and type(theirs) is open_clip.tokenizer.SimpleTokenizer
    assert (theirs.context_length, theirs.encoder, theirs.reduction_fn) == (
        shared.context_length, shared.encoder, shared.reduction_fn)
    texts = ["a photo of a cat", "", "Ünïcödé and emoji 🐈", "two  spaces\tand a tab", "x" * 200, "word " * 100]
    assert torch.equal(ours(texts), theirs(texts))
