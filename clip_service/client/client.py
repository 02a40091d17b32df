"""``ClipClient``: texts and images in, numpy arrays and per-item errors out, in batches the service accepts."""

from __future__ import annotations

import threading
import time
from typing import Any, Iterable, Sequence

import numpy as np

from . import sources, vectors
from .errors import NotAClipService, RequestRejected
from .limits import Limits
from .results import Classifications, Embeddings, FailedItem, ModelInfo
from .sources import ImageInput, Unusable
from .transport import RetryPolicy, Transport, error_message, loads

# What one item of a batch came back as: the answer's row for it, or why it has none.
Outcome = Any | FailedItem


class ClipClient:
    """A client for one clip-service; thread-safe, so one instance can serve many threads.

    ``timeout`` bounds each HTTP request, ``deadline`` each call as a whole
    (every batch, retry and wait of it). Batches follow the service's own
    limits, read once from its ``/openapi.json``; local images travel as data
    URIs in batches of at most ``max_request_bytes`` (a single larger image
    still goes, alone).
    """

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 60.0,
                 deadline: float = 600.0, connect_timeout: float = 10.0, retries: int = 8,
                 backoff: float = 0.5, max_backoff: float = 30.0, pool_size: int = 10,
                 max_request_bytes: int = 16 * 1024 * 1024, user_agent: str = "clip-service-client/1.0"):
        self.base_url = base_url.rstrip("/")
        self.deadline = deadline
        self.max_request_bytes = max_request_bytes
        self._http = Transport(self.base_url, api_key=api_key, timeout=timeout, connect_timeout=connect_timeout,
                               retry=RetryPolicy.make(retries, backoff, max_backoff), pool_size=pool_size,
                               user_agent=user_agent)
        self._lock = threading.Lock()
        self._limits: Limits | None = None
        self._model: ModelInfo | None = None

    def __enter__(self) -> "ClipClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- what the service is ----------------------------------------------------------

    def check(self) -> ModelInfo:
        """Contact the service once, without retrying connection errors: its model, or why not (raises)."""
        end = self._end(None)
        self.limits(_end=end, retry_connection_errors=False)
        return self.model_info(_end=end)

    def limits(self, *, _end: float | None = None, retry_connection_errors: bool = True) -> Limits:
        """The service's request limits (fetched once)."""
        with self._lock:
            if self._limits is None:
                doc = self._http.get_json("/openapi.json", _end or self._end(None),
                                          retry_connection_errors=retry_connection_errors)
                try:
                    self._limits = Limits.from_openapi(doc)
                except NotAClipService as exc:
                    raise NotAClipService(f"{self.base_url} is not a clip-service: {exc}") from None
            return self._limits

    def model_info(self, *, _end: float | None = None) -> ModelInfo:
        """The model the service runs (fetched once, from /v1/models)."""
        with self._lock:
            if self._model is None:
                doc = self._http.get_json("/v1/models", _end or self._end(None))
                try:
                    entry = doc["data"][0]
                    self._model = ModelInfo(str(entry["id"]), str(entry["pretrained"]), int(entry["dimensions"]),
                                            str(entry.get("precision", "")))
                except (KeyError, IndexError, TypeError, ValueError):
                    raise NotAClipService(f"{self.base_url}/v1/models does not describe a model") from None
            return self._model

    # --- embeddings -----------------------------------------------------------------------

    def embed_texts(self, texts: Sequence[str], *, dtype: str = "float32",
                    deadline: float | None = None) -> Embeddings:
        """One unit vector per text, in order; a text the service would refuse is a FailedItem, not sent.

        ``dtype``: float32 (sent as base64 of its bytes: lossless), float16, int8, uint8, binary or ubinary
        (the service's encodings of the same name: clip_service/encodings.py).
        """
        vectors.check_dtype(dtype)
        end = self._end(deadline)
        limits = self.limits(_end=end)
        sent_as = vectors.wire_format(dtype, limits.encodings)
        texts = list(texts)
        outcomes: dict[int, Outcome] = {}
        sendable = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                outcomes[i] = FailedItem(i, "invalid_input", f"a text must be a string, not {type(text).__name__}",
                                         "<text>")
            elif not _encodable(text):
                outcomes[i] = FailedItem(i, "invalid_input", "the text is not valid Unicode (a lone surrogate)",
                                         "<text>")
            elif limits.max_text_chars is not None and len(text) > limits.max_text_chars:
                outcomes[i] = FailedItem(i, "too_long", f"longer than the service's {limits.max_text_chars} "
                                                        "characters per text", "<text>")
            else:
                sendable.append((i, text))
        for start in range(0, len(sendable), limits.max_texts):
            batch = sendable[start:start + limits.max_texts]
            outcomes.update(self._post_batch("/embed/text", "texts", batch, _encoding(sent_as), "embeddings", end,
                                             lambda i: "<text>"))
        return self._embeddings(len(texts), outcomes, end, dtype, sent_as)

    def embed_images(self, images: Sequence[ImageInput], *, dtype: str = "float32",
                     deadline: float | None = None) -> Embeddings:
        """One unit vector per image (path, http(s) URL, data URI, bytes, binary file or PIL image), in order.

        ``dtype`` as for ``embed_texts``.
        """
        vectors.check_dtype(dtype)
        end = self._end(deadline)
        limits = self.limits(_end=end)
        sent_as = vectors.wire_format(dtype, limits.encodings)
        images = list(images)
        outcomes: dict[int, Outcome] = {}
        for batch in self._image_batches(images, limits.max_urls, limits, outcomes):
            outcomes.update(self._post_batch("/embed/image", "urls", batch, _encoding(sent_as), "embeddings", end,
                                             lambda i: sources.describe(images[i])))
        return self._embeddings(len(images), outcomes, end, dtype, sent_as)

    def classify(self, images: Sequence[ImageInput], labels: Sequence[str], *,
                 hypothesis_template: str | list[str] | None = None,
                 deadline: float | None = None) -> Classifications:
        """Zero-shot scores of each image for ``labels`` (POST /classify); a failed image is a FailedItem."""
        end = self._end(deadline)
        limits = self.limits(_end=end)
        if "/classify" not in limits.paths:
            raise RequestRejected(f"{self.base_url} has no /classify endpoint (an older service?)", 404)
        labels = list(labels)
        parameters: dict[str, Any] = {"candidate_labels": labels}
        if hypothesis_template is not None:
            parameters["hypothesis_template"] = hypothesis_template
        images = list(images)
        outcomes: dict[int, Outcome] = {}
        per_request = limits.max_classify_inputs or limits.max_urls
        for batch in self._image_batches(images, per_request, limits, outcomes):
            outcomes.update(self._post_batch("/classify", "inputs", batch, {"parameters": parameters}, "results",
                                             end, lambda i: sources.describe(images[i])))
        column = {label: j for j, label in enumerate(labels)}
        scores = np.full((len(images), len(labels)), np.nan, dtype=np.float32)
        errors = []
        for i in range(len(images)):
            outcome = outcomes[i]
            if isinstance(outcome, FailedItem):
                errors.append(outcome)
                continue
            for entry in outcome:
                if entry.get("label") in column:
                    scores[i, column[entry["label"]]] = float(entry["score"])
        return Classifications(labels, scores, errors)

    # --- batching -------------------------------------------------------------------------

    def _end(self, deadline: float | None) -> float:
        return time.monotonic() + (self.deadline if deadline is None else deadline)

    def _image_batches(self, images: list, per_request: int, limits: Limits,
                       outcomes: dict[int, Outcome]) -> Iterable[list[tuple[int, str]]]:
        """Yield (index, url) batches the service accepts; put images that cannot be sent in ``outcomes``."""
        batch: list[tuple[int, str]] = []
        size = 0
        for i, image in enumerate(images):
            url = sources.to_url(image)  # read here, batch by batch, so only one batch's bytes are held
            if isinstance(url, Unusable):
                outcomes[i] = FailedItem(i, url.code, url.message, sources.describe(image))
                continue
            if not _encodable(url):
                outcomes[i] = FailedItem(i, "invalid_url", "the URL is not valid Unicode (a lone surrogate)",
                                         "<url>")
                continue
            if (limits.max_url_chars is not None and not sources.is_data_uri(url)
                    and len(url) > limits.max_url_chars):
                outcomes[i] = FailedItem(i, "invalid_url", f"longer than the service's {limits.max_url_chars} "
                                                           "characters per URL", sources.describe(image)[:80] + "...")
                continue
            if batch and (len(batch) >= per_request or size + len(url) > self.max_request_bytes):
                yield batch
                batch, size = [], 0
            batch.append((i, url))
            size += len(url)
        if batch:
            yield batch

    def _post_batch(self, path: str, field: str, batch: list[tuple[int, Any]], extra: dict, key: str,
                    end: float, describe) -> dict[int, Outcome]:
        """POST one batch; each item's row of ``answer[key]`` or its FailedItem, by the caller's index.

        A batch too large for the body limit (413) or one that breaks the
        service (500) is halved until the item at fault is alone, so one bad
        item costs one row, not its whole batch.
        """
        response = self._http.post_json(path, {field: [value for _, value in batch], **extra}, end)
        status = response.status_code
        if status == 200:
            return self._answer(path, key, batch, response, describe)
        message = error_message(response)
        if status in (413, 500):
            if len(batch) == 1:
                index = batch[0][0]
                code = "too_large" if status == 413 else "service_error"
                return {index: FailedItem(index, code, message, describe(index))}
            half = len(batch) // 2
            return {**self._post_batch(path, field, batch[:half], extra, key, end, describe),
                    **self._post_batch(path, field, batch[half:], extra, key, end, describe)}
        if status == 422:
            refused = _refused_items(response, field, len(batch))
            if refused:
                outcomes: dict[int, Outcome] = {
                    batch[j][0]: FailedItem(batch[j][0], "invalid_input", text, describe(batch[j][0]))
                    for j, text in refused.items()}
                rest = [item for j, item in enumerate(batch) if j not in refused]
                if rest:
                    outcomes.update(self._post_batch(path, field, rest, extra, key, end, describe))
                return outcomes
        if status in (404, 405):
            raise NotAClipService(f"POST {self.base_url}{path} answered {status}: is {self.base_url} a clip-service?")
        raise RequestRejected(f"POST {self.base_url}{path} answered {status}: {message}", status)

    def _answer(self, path: str, key: str, batch: list[tuple[int, Any]], response, describe) -> dict[int, Outcome]:
        try:
            body = loads(response.content)
            rows = body[key]
            if not isinstance(rows, list) or len(rows) != len(batch):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise NotAClipService(f"POST {self.base_url}{path} answered 200 without {len(batch)} {key}") from None
        outcomes: dict[int, Outcome] = {index: row for (index, _), row in zip(batch, rows)}
        for error in body.get("errors") or []:
            index = batch[int(error["index"])][0]
            outcomes[index] = FailedItem(index, str(error.get("code", "failed")), str(error.get("message", "")),
                                         describe(index))
        with self._lock:
            if self._model is None and "model" in body:
                self._model = ModelInfo(body["model"], body.get("pretrained", ""), int(body["dimensions"]),
                                        str(body.get("precision", "")))
        return outcomes

    def _embeddings(self, count: int, outcomes: dict[int, Outcome], end: float, dtype: str,
                    sent_as: str) -> Embeddings:
        info = self.model_info(_end=end)
        rows = vectors.empty(count, dtype, info.dimensions)
        errors = []
        for i in range(count):
            outcome = outcomes[i]
            if not isinstance(outcome, FailedItem):
                try:
                    rows[i] = vectors.row(outcome, sent_as, dtype, info.dimensions)
                    continue
                except ValueError as exc:
                    outcome = FailedItem(i, "service_error", f"the service answered {exc}", "")
            errors.append(outcome)
        return Embeddings(rows, errors, info.model, info.pretrained, dtype=dtype, model_dimensions=info.dimensions,
                          precision=info.precision)


def _encoding(sent_as: str) -> dict:
    # "float" is every service's answer, the only one an older service knows: not asked for.
    return {} if sent_as == "float" else {"encoding": sent_as}


def _refused_items(response, field: str, count: int) -> dict[int, str]:
    """The items a 422 answer names ({"errors": {field: {"<index>": [messages]}}}), by position."""
    try:
        per_item = loads(response.content)["errors"][field]
        refused = {int(k): "; ".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in per_item.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}
    return refused if refused and all(0 <= j < count for j in refused) else {}


def _encodable(text: str) -> bool:
    """Whether ``text`` can travel as UTF-8 JSON (a lone surrogate cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
