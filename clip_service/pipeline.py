"""The one embedding pipeline under every endpoint: sources -> fetch -> embed -> slots and per-item errors.

Framework-free (no Flask, no request): views validate, call one method here,
and shape the answer. An image source is an http(s) URL, a ``data:`` URI or an
``Upload``; each is fetched or read, decoded and preprocessed in a download
thread (so a full-size image never outlives its preprocessing), and the good
ones go through the model together. A failed image is an ``ItemFailure`` in
the result, never an exception.
"""

from __future__ import annotations

import contextvars
import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import BinaryIO, Callable, Iterable, Sequence

import numpy as np
import torch

from .cache.keys import CacheKeys
from .cache.memory import LruCache
from .cache.vectors import VectorCache
from .images.errors import ItemError
from .images.fetcher import ImageFetcher
from .images.sources import describe
from .model.embedder import ClipEmbedder
from .model.tokenizer import token_count
from .zeroshot import Templates, best_first, ensemble, probabilities

# What /rank may order candidates by: the cosine, the model's own probabilities ("probability": a
# softmax over the candidates for CLIP, a sigmoid each for SigLIP), or one of those named, which must
# be the model's (a softmax of a sigmoid-trained model's logits is not what it learned, nor the reverse).
RANK_SCORES = ("cosine", "probability", "softmax", "sigmoid")
# Labels whose prompts' token digests same_labels keeps, so a label set sent again is not tokenized
# again: twenty sets of 1,000 labels, a few MB (each entry holds its label).
LABEL_DIGESTS = 20_000


@dataclass(frozen=True)
class Upload:
    """An image file sent in the request body."""

    stream: BinaryIO


ImageSource = str | Upload


@dataclass(frozen=True)
class ItemFailure:
    """One image that gave no vector: its position, what to call it, and why."""

    index: int
    source: str  # the URL, a data URI's header only, or upload:<index>
    error: ItemError


@dataclass
class TextVectors:
    vectors: np.ndarray  # one unit row per text, in order
    tokens: int  # CLIP tokens the model saw, start and end tokens included


@dataclass
class ImageVectors:
    vectors: list[np.ndarray | None]  # one per source, in order; None where it failed
    failures: list[ItemFailure] = field(default_factory=list)

    @property
    def slots(self) -> list:
        """The vectors with [] in a failed image's slot, as every image answer has them."""
        return [[] if v is None else v for v in self.vectors]


@dataclass
class InputVectors:
    """The vectors of one sequence of texts and images, in its order."""

    vectors: list[np.ndarray | None]  # one per input; None for an image that failed
    tokens: int  # CLIP tokens of the texts, start and end tokens included
    failures: list[ItemFailure] = field(default_factory=list)  # each indexed by its input's position


@dataclass(frozen=True)
class LabelScore:
    """One candidate label for one image."""

    label: str
    probability: float  # the model's own: softmax over the labels (CLIP) or a sigmoid each (SigLIP); ModelInfo.scores
    cosine: float


@dataclass
class Classification:
    images: list[list[LabelScore] | None]  # one per source: every label, best first; None where it failed
    failures: list[ItemFailure] = field(default_factory=list)


@dataclass(frozen=True)
class Ranked:
    """One candidate that did not fail: its position among the candidates, and its score."""

    index: int
    score: float


@dataclass
class Ranking:
    results: list[Ranked]  # best first, at most top_n; failed candidates left out
    failures: list[ItemFailure] = field(default_factory=list)


class WrongObjective(ValueError):
    """/rank asked for softmax scores of a sigmoid-trained model (SigLIP), or sigmoid scores of a contrastive one."""


class QueryFailed(Exception):
    """The query image of a ranking could not be used; ``failure`` says why."""

    def __init__(self, failure: ItemFailure):
        super().__init__(failure.error.message)
        self.failure = failure


@dataclass(frozen=True)
class ModelInfo:
    model: str
    pretrained: str
    dimensions: int
    # The arithmetic in force, fp32 or bf16 (CLIP_PRECISION=auto picks bf16 where the CPU has it):
    # bf16 vectors differ from open_clip's fp32 ones in the third digit, and this says so.
    precision: str


class EmbeddingPipeline:
    """Texts and image sources in, unit vectors and per-item errors out."""

    def __init__(self, embedder: ClipEmbedder, fetcher: ImageFetcher, *, cache: VectorCache | None = None,
                 label_cache_bytes: int = 32 << 20):
        self.embedder = embedder
        self.fetcher = fetcher
        # Vectors by what made them and their content (cache/); without one, keys still
        # tell identical items of one request apart, so each is embedded once.
        self.cache = cache if cache is not None else VectorCache(cache_keys(embedder), max_bytes=0)
        # Ensembled label vectors by (model, templates, label): the same labels sent
        # with every image cost one pass through the text tower.
        self.label_cache = LruCache(label_cache_bytes)
        # A digest of each label's prompts' token ids, by (templates, label), for same_labels:
        # at most LABEL_DIGESTS of them, so a label set sent again costs no tokenizing.
        self.label_digests = LruCache(LABEL_DIGESTS, size_of=lambda _: 1)
        # Called as on_embedded(modality, count) and on_failures(codes) after each
        # call; the web layer hangs its metrics and request log here.
        self.on_embedded: Callable[[str, int], None] | None = None
        self.on_failures: Callable[[Iterable[str]], None] | None = None

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(self.embedder.model_name, self.embedder.pretrained_label, self.embedder.dimensions,
                         self.embedder.precision)

    def embed_texts(self, texts: Sequence[str]) -> TextVectors:
        """Embed ``texts`` in order (truncated to the model's context as CLIP does)."""
        if not texts:
            return TextVectors(np.zeros((0, self.embedder.dimensions), dtype=np.float32), 0)
        tokens = self.embedder.tokenize(texts)
        result = TextVectors(self._text_vectors(tokens), token_count(tokens))
        self._embedded("text", len(texts))
        return result

    def _text_vectors(self, tokens: torch.Tensor) -> np.ndarray:
        # Equal token ids give equal vectors: each distinct text is looked up, and embedded, once.
        rows = tokens.numpy()
        keys = [self.cache.keys.text_key(row) for row in rows]
        first: dict[bytes, int] = {}  # each distinct key, at its first row, in order
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        known = dict(zip(first, self.cache.get_many("text", list(first))))
        todo = [key for key, vector in known.items() if vector is None]
        if todo:
            fresh = self.embedder.embed_tokens(tokens[[first[key] for key in todo]])
            known.update(zip(todo, fresh))
            self.cache.put_many(list(zip(todo, fresh)))
        return np.stack([known[key] for key in keys])

    def embed_images(self, sources: Sequence[ImageSource], *, all_or_none: bool = False) -> ImageVectors:
        """Fetch and embed ``sources`` as one batch; a failed source's slot is None, with an ItemFailure.

        With ``all_or_none`` (for APIs that cannot answer in part) nothing is
        embedded once any source has failed.
        """
        # The model's runners may wait a moment for these rather than start a batch without them.
        with self.embedder.expecting_images(len(sources)) as coming:
            fetched = self.fetcher.fetch_all([s.stream if isinstance(s, Upload) else s for s in sources],
                                             self._model_input)
            good = [i for i, item in enumerate(fetched) if not isinstance(item, ItemError)]
            if all_or_none and len(good) < len(sources):
                good = []
            known = {fetched[i].key: fetched[i].vector for i in good}
            # Identical images (the same bytes, whatever their URLs) go through the model once.
            todo = {fetched[i].key: fetched[i].pixels for i in good if known[fetched[i].key] is None}
            if todo:
                fresh = self.embedder.embed_pixels(torch.stack(list(todo.values())), expected=coming)
                known.update(zip(todo, fresh))
                self.cache.put_many(list(zip(todo, fresh)))
        vectors: list[np.ndarray | None] = [None] * len(sources)
        for i in good:
            vectors[i] = known[fetched[i].key]
        self._embedded("image", len(good))
        failures = [ItemFailure(i, _name(source, i), item)
                    for i, (source, item) in enumerate(zip(sources, fetched)) if isinstance(item, ItemError)]
        if failures and self.on_failures is not None:
            self.on_failures(f.error.code for f in failures)
        return ImageVectors(vectors, failures)

    def embed_mixed(self, texts: Sequence[str], sources: Sequence[ImageSource], *,
                    all_or_none: bool = False) -> tuple[TextVectors, ImageVectors]:
        """Embed texts and images of one request; the texts go through the model while the images download."""
        if not texts or not sources:
            return self.embed_texts(texts), self.embed_images(sources, all_or_none=all_or_none)
        with ThreadPoolExecutor(1, thread_name_prefix="mixed-texts") as pool:
            text_job = pool.submit(contextvars.copy_context().run, self.embed_texts, texts)
            images = self.embed_images(sources, all_or_none=all_or_none)
            return text_job.result(), images

    def embed_inputs(self, items: Sequence[str | ImageSource], is_image: Sequence[bool], *,
                     all_or_none: bool = False) -> InputVectors:
        """Embed one sequence of texts and images (``is_image`` says which is which); vectors in its order."""
        images = [i for i, image in enumerate(is_image) if image]
        texts = [i for i, image in enumerate(is_image) if not image]
        text_vectors, image_vectors = self.embed_mixed([items[i] for i in texts], [items[i] for i in images],
                                                       all_or_none=all_or_none)
        vectors: list[np.ndarray | None] = [None] * len(items)
        for positions, rows in ((texts, text_vectors.vectors), (images, image_vectors.vectors)):
            for i, vector in zip(positions, rows):
                vectors[i] = vector
        failures = [replace(f, index=images[f.index]) for f in image_vectors.failures]
        return InputVectors(vectors, text_vectors.tokens, failures)

    def label_vectors(self, labels: Sequence[str], templates: Templates) -> np.ndarray:
        """One unit vector per label: its prompts' text vectors ensembled (open_clip's zero-shot classifier)."""
        identity = (self.embedder.model_name, self.embedder.pretrained)
        keys = [(*identity, templates.key, label) for label in labels]
        found = self.label_cache.get_many(keys)
        missing = [i for i, vector in enumerate(found) if vector is None]
        if missing:
            fresh = ensemble(self.embed_texts(templates.texts([labels[i] for i in missing])).vectors, len(missing))
            self.label_cache.put_many(zip([keys[i] for i in missing], fresh))
            for i, vector in zip(missing, fresh):
                found[i] = vector
        return np.stack(found) if found else np.zeros((0, self.embedder.dimensions), dtype=np.float32)

    def same_labels(self, labels: Sequence[str], templates: Templates) -> dict[int, int]:
        """Labels the model cannot tell apart: each one's position -> the first label it equals.

        Two labels are equal when every prompt of theirs has the same token ids:
        the tokenizer mends text (ftfy, NFC), lowercases, folds whitespace and
        reads at most the context, so "Cat" and "cat", "cat " and "cat", or
        café in NFC and NFD would get the same vector, and each half the score.
        """
        keys = [(templates.key, label) for label in labels]
        digests = self.label_digests.get_many(keys)
        missing = [i for i, digest in enumerate(digests) if digest is None]
        if missing:
            tokens = self.embedder.tokenize(templates.texts([labels[i] for i in missing])).numpy()
            rows = tokens.reshape(len(missing), -1)  # one row per label: its prompts' tokens end to end
            fresh = [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows]
            self.label_digests.put_many(zip([keys[i] for i in missing], fresh))
            for i, digest in zip(missing, fresh):
                digests[i] = digest
        first: dict[bytes, int] = {}  # each digest's first position
        same = {}
        for i, digest in enumerate(digests):
            if (j := first.setdefault(digest, i)) != i:
                same[i] = j
        return same

    def classify(self, sources: Sequence[ImageSource], labels: Sequence[str], templates: Templates) -> Classification:
        """Score each image against ``labels``, best first; the labels are embedded while the images download."""
        with ThreadPoolExecutor(1, thread_name_prefix="labels") as pool:
            label_job = pool.submit(contextvars.copy_context().run, self.label_vectors, labels, templates)
            images = self.embed_images(sources)
            label_matrix = label_job.result()
        scored: list[list[LabelScore] | None] = []
        for vector in images.vectors:
            if vector is None:
                scored.append(None)
                continue
            cosines = label_matrix @ vector
            scores = self._probabilities(cosines)
            scored.append([LabelScore(labels[i], float(scores[i]), float(cosines[i])) for i in best_first(scores)])
        return Classification(scored, images.failures)

    def rank(self, query: str | ImageSource, candidates: Sequence, *, query_is_image: bool, by: str,
             top_n: int | None = None) -> Ranking:
        """Order candidate images against a text query, or candidate texts against an image query, best first.

        ``by`` is one of RANK_SCORES: the cosine, or the model's probabilities
        (over the candidates that did not fail, for a softmax); ``softmax`` or
        ``sigmoid`` by name must be the model's own (else WrongObjective).
        """
        if by not in RANK_SCORES:
            raise ValueError(f"by must be one of {RANK_SCORES}, not {by!r}")
        objective = self.embedder.scores
        if by in ("softmax", "sigmoid") and by != objective:
            raise WrongObjective(f"{self.embedder.model_name} was trained with a {objective} objective: its "
                                 f"probabilities are scores={objective} (or probability), not {by}")
        if query_is_image:
            texts, images = self.embed_mixed(list(candidates), [query])
            if images.failures:
                raise QueryFailed(images.failures[0])
            query_vector, candidate_vectors = images.vectors[0], list(texts.vectors)
            failures: list[ItemFailure] = []
        else:
            texts, images = self.embed_mixed([query], list(candidates))
            query_vector, candidate_vectors, failures = texts.vectors[0], images.vectors, images.failures
        cosines = np.array([np.nan if v is None else float(v @ query_vector) for v in candidate_vectors])
        scores = cosines
        if by != "cosine":
            good = ~np.isnan(cosines)
            scores = np.full(len(cosines), np.nan)
            if good.any():
                scores[good] = self._probabilities(cosines[good])
        return Ranking([Ranked(i, float(scores[i])) for i in best_first(scores, top_n)], failures)

    @property
    def scores(self) -> str:
        """How /classify and /rank score for this model: ``softmax`` (contrastive CLIP) or ``sigmoid`` (SigLIP)."""
        return self.embedder.scores

    def _probabilities(self, cosines: np.ndarray) -> np.ndarray:
        embedder = self.embedder
        return probabilities(cosines, embedder.scores, embedder.logit_scale, embedder.logit_bias)

    def _model_input(self, data: bytes, deadline: float) -> "_Prepared":
        # Runs in the download thread: a cached vector needs no decoding at all, and a
        # decoded image lives only until it is preprocessed (within the decode budget),
        # so only the model-sized tensor waits for the batch.
        key = self.cache.keys.image_key(data)
        (vector,) = self.cache.get_many("image", [key])
        if vector is not None:
            return _Prepared(key, vector=vector)
        with self.fetcher.decoding(data, deadline) as image:
            return _Prepared(key, pixels=self.embedder.preprocess_image(image))

    def _embedded(self, modality: str, count: int) -> None:
        if self.on_embedded is not None:
            self.on_embedded(modality, count)


@dataclass
class _Prepared:
    """One fetched image: its cache key, and its cached vector or its model input."""

    key: bytes
    vector: np.ndarray | None = None
    pixels: torch.Tensor | None = None


def cache_keys(embedder: ClipEmbedder, *, weights: str = "(this process)", draft_size: int | None = None) -> CacheKeys:
    """Keys naming everything that made a vector; without a weights digest, good for this process only
    (enough to find a request's duplicates)."""
    return CacheKeys(model_name=embedder.model_name, weights=weights, device=embedder.device,
                     prepacked=bool(embedder.prepacked_blocks), preprocess=repr(embedder.preprocess),
                     draft_size=draft_size, precision=embedder.precision)


def _name(source: ImageSource, index: int) -> str:
    # Not an upload's file name: it may hold anything, and the index already identifies it.
    return f"upload:{index}" if isinstance(source, Upload) else describe(source)
