"""Fast JSON for responses: orjson writes numpy vectors straight to bytes."""

from __future__ import annotations

import orjson
from flask import Response
from flask.json.provider import JSONProvider

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
