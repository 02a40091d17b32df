"""JSON in and out: strict request bodies, and orjson writing numpy vectors straight to bytes."""

from __future__ import annotations

import json

import orjson
from flask import Request, Response
from flask.json.provider import JSONProvider
from flask_smorest import abort
from webargs.core import is_json
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import RequestEntityTooLarge

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps_bytes(obj) -> bytes:
    return orjson.dumps(obj, option=_OPTIONS)


def json_response(body, status: int = 200, headers=None) -> Response:
    """A JSON response whose numpy arrays become plain JSON number lists."""
    return Response(dumps_bytes(body), status=status, headers=headers, mimetype="application/json")


class OrjsonProvider(JSONProvider):
    """Flask's JSON provider backed by orjson (used by jsonify and flask-smorest)."""

    def dumps(self, obj, **kwargs) -> str:
        return dumps_bytes(obj).decode()

    def loads(self, s, **kwargs):
        return orjson.loads(s)


class InvalidBody(ValueError):
    """A request body that is not a JSON document; the message is safe to show the client."""


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def loads_body(data: bytes):
    """Parse a request body as strict JSON (UTF-8, no NaN); raise ``InvalidBody`` saying why not.

    orjson takes the fast path and refuses nesting deeper than 1024. It also
    refuses escaped lone surrogates ("\\ud800"), which JSON allows, so a body it
    refuses is tried once more with the stdlib parser, whose RecursionError on
    deep nesting is caught here rather than becoming a 500. (The schemas then
    refuse a lone surrogate with a 422 naming its field: common_schemas.BodySchema.)
    """
    if not data.strip():
        raise InvalidBody("the request body is empty; send a JSON object")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidBody("the request body is not valid UTF-8") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise InvalidBody("the request body is nested too deeply") from None
    except json.JSONDecodeError as exc:
        # exc.msg is a fixed phrase ("Expecting value"); the body is never echoed.
        raise InvalidBody(f"the request body is not valid JSON: {exc.msg} at line {exc.lineno}, "
                          f"column {exc.colno}") from None
    except ValueError as exc:
        raise InvalidBody(f"the request body is not valid JSON: {exc}") from None


class JsonBodyParser(FlaskParser):
    """webargs' Flask parser, strict about JSON bodies.

    webargs treats a body with another Content-Type as missing (a misleading
    422) and parses with the stdlib (deep nesting raises RecursionError, a
    500). Here: 415 for a Content-Type other than UTF-8 JSON, 400 for a body
    that is not JSON, 413 (from Werkzeug) for one over the size limit.
    With ``json_without_content_type`` a body with no Content-Type at all is
    read as JSON too (for clients that send none, such as Weaviate before 1.26).
    """

    def __init__(self, *args, json_without_content_type: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.json_without_content_type = json_without_content_type

    def load_json(self, req: Request, schema):
        if not is_json(req.mimetype) and not (self.json_without_content_type and not req.mimetype):
            abort(415, message="send the body as JSON with Content-Type: application/json")
        charset = req.mimetype_params.get("charset", "utf-8").lower()
        if charset not in ("utf-8", "utf8"):
            abort(415, message="JSON bodies must be encoded as UTF-8")
        data = req.get_data(cache=True)  # 413 when Content-Length is over the limit
        limit = req.max_content_length
        if req.content_length is None and limit is not None and len(data) >= limit \
                and req.environ["wsgi.input"].read(1):
            # A streamed (chunked) body: Werkzeug's LimitedStream.readall stops at
            # the limit without saying there was more, so look for one byte past it.
            # (The service's worker answers these 413 itself; Gunicorn's own gthread
            # worker and other servers hand them to the app.)
            raise RequestEntityTooLarge()
        try:
            return loads_body(data)
        except InvalidBody as exc:
            abort(400, message=str(exc))
