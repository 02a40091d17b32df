"""``ModelLoadError``: the configured weights cannot be served; one line, and the service does not start."""

from __future__ import annotations


class ModelLoadError(RuntimeError):
    """The configured weights could not be loaded; the service must not start."""


def short_cause(exc: BaseException) -> str:
    """The first sentence of an exception message: libraries' full messages run for paragraphs."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    sentence = text.split(". ")[0]
    return sentence if len(sentence) <= 200 else sentence[:197] + "..."


class UnsupportedModelError(ModelLoadError):
    """CLIP_MODEL names an architecture the service does not serve (CoCa, no image tower): a setting to change."""
