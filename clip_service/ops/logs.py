"""Structured logs: one JSON object per line in Cloud Logging's format.

Cloud Logging reads ``severity``, ``message``, ``time``,
``logging.googleapis.com/trace`` and ``httpRequest`` from each line of stdout;
everything else lands in ``jsonPayload``.

No line carries a value of a URL's query: a client may send its API key in
any parameter (``?k=``, ``?Bearer=``) or as the whole query (``?<key>``), and
Gunicorn's own messages copy the request lines they refuse.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from datetime import datetime, timezone

from pythonjsonlogger.json import JsonFormatter

from .request_context import current_log_fields

# A query in free text (a request line, a URL in an error message): up to a space, a quote or a bracket.
_QUERY_IN_TEXT = re.compile(r"\?([^\s'\"`<>]+)")


def redact_query(query: str) -> str:
    """``query`` with every value replaced by ``REDACTED``: parameter names only (a part with no ``=`` is a value)."""
    parts = []
    for part in query.split("&"):
        name, sep, _ = part.partition("=")
        parts.append(f"{name}=REDACTED" if sep else "REDACTED" if part else "")
    return "&".join(parts)


def scrub_queries(text: str) -> str:
    """``text`` with each URL query in it reduced to its parameter names (``redact_query``)."""
    return _QUERY_IN_TEXT.sub(lambda match: "?" + redact_query(match.group(1)), text)


class CloudLoggingFormatter(JsonFormatter):
    """JSON lines with Cloud Logging's field names (request id and trace come from the record), no query values."""

    def __init__(self):
        super().__init__("%(message)s %(levelname)s %(name)s",
                         rename_fields={"levelname": "severity", "name": "logger"})

    def add_fields(self, log_record, record, message_dict):
        super().add_fields(log_record, record, message_dict)
        log_record["time"] = datetime.fromtimestamp(record.created, timezone.utc).isoformat()
        log_record["pid"] = record.process
        if log_record.get("severity") == "WARN":
            log_record["severity"] = "WARNING"
        # Whatever wrote the message (Gunicorn's own refusals copy the request line), no query value leaves.
        for key in ("message", "exc_info", "stack_info"):
            if isinstance(log_record.get(key), str):
                log_record[key] = scrub_queries(log_record[key])


def install_request_fields() -> None:
    """Stamp every log record made during a request with its id and trace, when it is made.

    A record factory (not a handler filter) so the fields are right whichever
    handler formats the record, and later: formatting may happen after the
    request has ended.
    """
    factory = logging.getLogRecordFactory()
    if getattr(factory, "_clip_service", False):
        return

    def make_record(*args, **kwargs):
        record = factory(*args, **kwargs)
        for key, value in current_log_fields().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return record

    make_record._clip_service = True
    logging.setLogRecordFactory(make_record)


def json_handler(stream=None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(CloudLoggingFormatter())
    handler._clip_service = True
    return handler


def configure_logging(level: str) -> None:
    """Send JSON log lines to stdout at ``level``; idempotent."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    if not any(getattr(h, "_clip_service", False) for h in root.handlers):
        root.addHandler(json_handler())
    # open_clip logs its loading steps at INFO on the root logger; keep them
    # unless asked for DEBUG, and quieten chatty libraries.
    for noisy in ("urllib3", "PIL", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def gcp_project() -> str | None:
    """The project for trace links: GOOGLE_CLOUD_PROJECT, when the platform sets it."""
    return os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GCP_PROJECT") or None
