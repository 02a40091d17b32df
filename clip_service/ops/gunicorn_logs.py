"""Gunicorn's own logs (errors and access) as Cloud Logging JSON lines."""

from __future__ import annotations

import logging

from gunicorn import glogging

from .logs import CloudLoggingFormatter, gcp_project, redact_query
from .request_context import TRACE_KEY, parse_trace


def status_code(resp) -> int | None:
    """``resp``'s status: Gunicorn's own error answers set ``status`` ("400 Bad Request") but no ``status_code``."""
    code = getattr(resp, "status_code", None)
    if code is None:
        head = str(resp.status or "").split(None, 1)
        code = int(head[0]) if head and head[0].isdigit() else None
    return code


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
        try:
            self._access(resp, req, environ, request_time)
        except Exception:
            # Never raise: Gunicorn logs its error answers before writing them, and would then write none.
            self.exception("access log failed")

    def _access(self, resp, req, environ, request_time):
        headers = {name.lower(): value for name, value in (resp.headers or [])}
        status = status_code(resp)
        # The path and the query's parameter names: a client may send its key in any parameter.
        query = f"?{redact_query(req.query)}" if req.query else ""
        extra = {"httpRequest": {
            "requestMethod": req.method,
            "requestUrl": req.path + query,
            "status": status,
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
        # "400" alone for a request refused before its method and path could be read
        message = " ".join(str(part) for part in (req.method, req.path, status) if part)
        self.access_log.log(logging.INFO, message, extra=extra)
