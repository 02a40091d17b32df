"""Small Hugging Face tokenizers made with the ``tokenizers`` package, saved as the model hub holds them.

SigLIP's tokenizer is a T5 (SentencePiece unigram) tokenizer, SigLIP2's a Gemma
(byte-fallback BPE) one; both are out of reach here, so the tests train small
ones of the same kinds on a fixed text and save ``tokenizer.json``,
``tokenizer_config.json`` and ``special_tokens_map.json`` the way the hub's
folders have them. The service's real loading code then runs on them.
"""

from __future__ import annotations

import json
from pathlib import Path

# The training text: enough words for the prompts and labels the tests send.
CORPUS = ("a photo of a cat. a photo of a dog. this is a photo of a red car on the street. "
          "two dogs playing with a ball in a park at sunset; a diagram, a drawing, a painting of mountains. "
          "the quick brown fox jumps over the lazy dog! café crème, naïve façade, 東京 the city at night. "
          "an image of a bicycle, a train, a boat, a flower, a garden, a kitchen, a child and a woman.").split(". ")

# What each kind's tokenizer_config.json says, as the hub's SigLIP folders do.
KINDS = {
    # timm/ViT-B-16-SigLIP: T5's SentencePiece unigram, "</s>" appended, "<pad>" is 0... and "</s>" 1.
    "t5": {"tokenizer_class": "T5Tokenizer", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
           "model_max_length": 64},
    # timm/ViT-B-16-SigLIP2: Gemma's byte-fallback BPE, no BOS, "<eos>" appended, right padding with "<pad>" (0).
    "gemma": {"tokenizer_class": "GemmaTokenizer", "pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>",
              "unk_token": "<unk>", "add_bos_token": False, "add_eos_token": True, "padding_side": "right",
              "model_max_length": 64},
}


def write_hub_tokenizer(directory: Path, kind: str = "t5", vocab_size: int = 300) -> Path:
    """Train a ``kind`` tokenizer on CORPUS and save it in ``directory`` as the hub holds it; return ``directory``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = KINDS[kind]
    if kind == "t5":
        specials = ["<pad>", "</s>", "<unk>"]
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.normalizer = normalizers.Sequence([normalizers.Replace("  ", " ")])
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>")
        tokenizer.train_from_iterator(CORPUS, trainer)
        tokenizer.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))])
    else:
        specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        tokenizer.normalizer = normalizers.Replace(" ", "▁")
        tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
        bytes_ = [f"<0x{b:02X}>" for b in range(256)]
        trainer = trainers.BpeTrainer(vocab_size=vocab_size + 256, special_tokens=specials + bytes_)
        tokenizer.train_from_iterator(CORPUS, trainer)
        # What the hub's file holds: the template Gemma's add_bos_token/add_eos_token make (none, then <eos>).
        tokenizer.post_processor = processors.TemplateProcessing(
            single="$A:0 <eos>:0", pair="$A:0 <eos>:0 $B:1 <eos>:1", special_tokens=[("<eos>", 1)])
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {k: v for k, v in config.items() if k.endswith("_token")}, indent=2))
    return directory
