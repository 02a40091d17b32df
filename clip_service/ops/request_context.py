"""Per-request id, trace and outcome counts, kept in a context variable.

A contextvar (not flask.g) so that log lines written by helper threads that
run inside ``contextvars.copy_context()`` carry the request id too.
"""

from __future__ import annotations

import contextvars
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_TRACE_RE = re.compile(r"^([0-9a-fA-F]{32})(?:/(\d+))?")


@dataclass
class RequestInfo:
    request_id: str
    trace: str | None = None
    span_id: str | None = None
    key_id: str | None = None  # which API key called (a short digest, never the key)
    items: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    cache_hits: Counter = field(default_factory=Counter)


# Cloud Logging's keys for the trace and span of a log line.
TRACE_KEY = "logging.googleapis.com/trace"
SPAN_KEY = "logging.googleapis.com/spanId"

_current: contextvars.ContextVar[RequestInfo | None] = contextvars.ContextVar("clip_request", default=None)


def begin(request_id_header: str | None, trace_header: str | None, project: str | None) -> RequestInfo:
    """Start a request: honour a sane ``X-Request-ID`` or make one; parse ``X-Cloud-Trace-Context``."""
    request_id = request_id_header if request_id_header and _REQUEST_ID_RE.match(request_id_header) \
        else uuid.uuid4().hex
    info = RequestInfo(request_id=request_id)
    info.trace, info.span_id = parse_trace(trace_header, project)
    _current.set(info)
    return info


def parse_trace(header: str | None, project: str | None) -> tuple[str | None, str | None]:
    """``X-Cloud-Trace-Context: TRACE_ID/SPAN_ID;o=1`` -> (Cloud Logging trace, hex span id)."""
    match = _TRACE_RE.match(header or "")
    if not match:
        return None, None
    trace_id = match.group(1).lower()
    trace = f"projects/{project}/traces/{trace_id}" if project else trace_id
    # The header carries a decimal span id; Cloud Logging wants 16 hex digits.
    span = format(int(match.group(2)) & (2**64 - 1), "016x") if match.group(2) else None
    return trace, span


def end() -> None:
    _current.set(None)


def current() -> RequestInfo | None:
    return _current.get()


def count_items(modality: str, n: int) -> None:
    info = _current.get()
    if info is not None and n:
        info.items[modality] += n


def count_cache_hits(modality: str, n: int) -> None:
    info = _current.get()
    if info is not None and n:
        info.cache_hits[modality] += n


def count_failure(code: str) -> None:
    info = _current.get()
    if info is not None:
        info.failures[code] += 1


def current_log_fields() -> dict:
    info = _current.get()
    if info is None:
        return {}
    fields = {"request_id": info.request_id}
    if info.trace:
        fields[TRACE_KEY] = info.trace
    if info.span_id:
        fields[SPAN_KEY] = info.span_id
    return fields


