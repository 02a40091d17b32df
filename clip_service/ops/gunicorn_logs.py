"""Gunicorn's own logs (errors and access) as Cloud Logging JSON lines."""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

from gunicorn import glogging

from .logs import CloudLoggingFormatter, gcp_project
from .request_context import TRACE_KEY, parse_trace

# Query parameters whose values are never logged: a client that puts its API key
# in the URL must not see it copied into the logs as well.
_SECRET_NAME = re.compile(r"key|token|secret|passw|auth|sig", re.IGNORECASE)


def redact_query(query: str) -> str:
    """``query`` with the values of credential-like parameters replaced by ``REDACTED``."""
    parts = []
    for part in query.split("&"):
        name, sep, _ = part.partition("=")
        parts.append(f"{name}=REDACTED" if sep and _SECRET_NAME.search(unquote_plus(name)) else part)
    return "&".join(parts)


class JsonGunicornLogger(glogging.Logger):
    """Gunicorn's logger with JSON formatting and a structured ``httpRequest`` access record."""

    def setup(self, cfg):
        super().setup(cfg)
        # Gunicorn always logs access lines at INFO; here they obey LOG_LEVEL like every other line.
        self.access_log.setLevel(max(logging.INFO, self.error_log.level))
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(CloudLoggingFormatter())

    def access(self, resp, req, environ, request_time):
        if not self.access_log_enabled:
            return
        headers = {name.lower(): value for name, value in (resp.headers or [])}
        query = f"?{redact_query(req.query)}" if req.query else ""
        extra = {"httpRequest": {
            "requestMethod": req.method,
            "requestUrl": req.path + query,
            "status": resp.status_code,
            "responseSize": str(getattr(resp, "sent", 0) or 0),
            "userAgent": environ.get("HTTP_USER_AGENT", ""),
            "remoteIp": environ.get("REMOTE_ADDR", ""),
            "protocol": environ.get("SERVER_PROTOCOL", ""),
            "latency": f"{request_time.total_seconds():.6f}s",
        }}
        request_id = headers.get("x-request-id")
        if request_id:
            extra["request_id"] = request_id
        trace, span = parse_trace(environ.get("HTTP_X_CLOUD_TRACE_CONTEXT"), gcp_project())
        if trace:
            extra[TRACE_KEY] = trace
        try:
            self.access_log.log(logging.INFO, "%s %s %s", req.method, req.path, resp.status_code, extra=extra)
        except Exception:
            self.exception("access log failed")
