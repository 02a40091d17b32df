"""Zero-shot labelling and ranking arithmetic: prompt templates, ensembled label vectors, the model's scores, best first.

Framework-free and model-free: the pipeline embeds, this module says what to
embed and how to score it, exactly as open_clip's zero-shot evaluation does
(``build_zero_shot_classifier``: each template's text vector normalised, the
mean over templates normalised again; logits = logit scale x cosine). The
scores follow the model's training objective (``probabilities``): a softmax
over the candidates for contrastive CLIP, an independent sigmoid of logits +
logit bias per candidate for SigLIP (as open_clip's SigLIP loss and Hugging
Face's zero-shot pipeline compute them), which need not sum to 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

# Hugging Face's zero-shot-image-classification default.
DEFAULT_TEMPLATE = "This is a photo of {}."
# open_clip's own template sets, by name.
NAMED_TEMPLATES: dict[str, Sequence[Callable[[str], str]]] = {
    "openai_imagenet": OPENAI_IMAGENET_TEMPLATES,  # the 80 prompts of CLIP's paper
    "simple_imagenet": SIMPLE_IMAGENET_TEMPLATES,  # 7 of them, chosen by OpenAI as nearly as good
}


def template_problem(template: str) -> str | None:
    """Why ``template`` is not usable (it needs exactly one ``{}``), or None."""
    if template.count("{}") != 1:
        return "A template needs exactly one {} where the label goes."
    return None


@dataclass(frozen=True)
class Templates:
    """The prompts a label is put into; ``key`` names them in cache keys."""

    key: str
    prompts: tuple[Callable[[str], str], ...]

    @classmethod
    def from_spec(cls, spec: str | Sequence[str]) -> "Templates":
        """A named set (``openai_imagenet``), one template with ``{}``, or a list of them; ValueError if not."""
        if isinstance(spec, str) and spec in NAMED_TEMPLATES:
            return cls(f"named:{spec}", tuple(NAMED_TEMPLATES[spec]))
        templates = [spec] if isinstance(spec, str) else list(spec)
        for template in templates:
            problem = template_problem(template)
            if problem:
                raise ValueError(problem)
        # str.replace, not str.format: a label's own braces stay as they are.
        return cls("list:" + "\x1f".join(templates),
                   tuple((lambda label, t=t: t.replace("{}", label)) for t in templates))

    def __len__(self) -> int:
        return len(self.prompts)

    def texts(self, labels: Sequence[str]) -> list[str]:
        """Every prompt for every label: label-major, as ``ensemble`` reads them back."""
        return [prompt(label) for label in labels for prompt in self.prompts]


def ensemble(text_vectors: np.ndarray, labels: int) -> np.ndarray:
    """One unit vector per label: its prompts' unit vectors averaged, then normalised again."""
    per_label = text_vectors.reshape(labels, -1, text_vectors.shape[-1]).mean(axis=1)
    return per_label / np.linalg.norm(per_label, axis=1, keepdims=True)


def softmax(cosines: np.ndarray, logit_scale: float) -> np.ndarray:
    """CLIP's probabilities over the last axis: softmax of logit scale x cosine."""
    logits = logit_scale * cosines.astype(np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=-1, keepdims=True)


def sigmoid(cosines: np.ndarray, logit_scale: float, logit_bias: float) -> np.ndarray:
    """SigLIP's probabilities: sigmoid(logit scale x cosine + logit bias), each candidate on its own."""
    logits = logit_scale * cosines.astype(np.float64) + logit_bias
    # exp of a large positive logit overflows; 1 / (1 + exp(-x)) written both ways stays finite.
    return np.where(logits >= 0, 1 / (1 + np.exp(-np.abs(logits))), np.exp(-np.abs(logits)) / (1 + np.exp(-np.abs(logits))))


def probabilities(cosines: np.ndarray, objective: str, logit_scale: float, logit_bias: float | None) -> np.ndarray:
    """The model's own scores over the last axis: ``softmax`` (CLIP) or ``sigmoid`` (SigLIP, with its bias)."""
    if objective == "sigmoid":
        return sigmoid(cosines, logit_scale, logit_bias or 0.0)
    if objective == "softmax":
        return softmax(cosines, logit_scale)
    raise ValueError(f"objective must be softmax or sigmoid, not {objective!r}")


def best_first(scores: np.ndarray, top_n: int | None = None) -> list[int]:
    """Positions of ``scores`` from best to worst (ties in order), NaN (a failed candidate) left out, at most ``top_n``."""
    kept = sorted((i for i in range(len(scores)) if scores[i] == scores[i]), key=lambda i: -scores[i])
    return kept[:top_n]
