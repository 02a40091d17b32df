"""Errors under /v1 in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

The service's own handlers (errors.py) still decide every error's status,
message and headers; under /v1 their envelope is rewritten in OpenAI's shape,
so the two APIs can never disagree about what went wrong. Request validation
answers 400 there, as OpenAI does, instead of the service's 422.
"""

from __future__ import annotations

import functools

import orjson
from flask import Flask, Response, has_request_context, request

from ..jsonio import json_response

PREFIX = "/v1"

# OpenAI's ``code`` for errors that have no more specific one.
_CODES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large",
          415: "unsupported_media_type", 500: "internal_error", 503: "overloaded"}


class OpenAIError(Exception):
    """An error a /v1 view raises, answered as it is (status, message, param, code)."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def openai_error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                          headers=None) -> Response:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code or _CODES.get(status)}}
    return json_response(body, status=status, headers=headers)


def _under_prefix() -> bool:
    return has_request_context() and (request.path == PREFIX or request.path.startswith(PREFIX + "/"))


def _field_path(errors: dict) -> tuple[str | None, str]:
    """The first field error as (path such as "input[1]", message); path None for a rule across fields."""
    name, value = next(iter(errors.items()))
    path = str(name)
    while isinstance(value, dict) and value:
        key, value = next(iter(value.items()))
        path += f"[{key}]" if str(key).isdigit() else f".{key}"
    message = value[0] if isinstance(value, list) and value else str(value)
    return (None if name == "_schema" else path), message


def _rewrite(response: Response) -> Response:
    envelope = orjson.loads(response.get_data())
    status, message, param = response.status_code, envelope["message"], None
    if envelope.get("errors"):
        param, detail = _field_path(envelope["errors"])
        message = detail if param is None else f"Invalid '{param}': {detail}"
    if status == 422:
        status = 400
    headers = [(k, v) for k, v in response.headers.items() if k.lower() not in ("content-type", "content-length")]
    return openai_error_response(status, message, param=param, headers=headers)


def _in_openai_shape(handler):
    @functools.wraps(handler)
    def handle(error):
        response = handler(error)
        return _rewrite(response) if _under_prefix() else response

    return handle


def _handle_openai_error(error: OpenAIError) -> Response:
    return openai_error_response(error.status, error.message, param=error.param, code=error.code)


def register_openai_error_handlers(app: Flask) -> None:
    """Call after errors.register_error_handlers: wraps the handlers registered there."""
    handlers = app.error_handler_spec[None][None]
    for exc_class, handler in list(handlers.items()):
        handlers[exc_class] = _in_openai_shape(handler)
    app.register_error_handler(OpenAIError, _handle_openai_error)
