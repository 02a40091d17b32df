"""multipart/form-data bodies for POST /embed/image: each ``images`` part is an image, in the order sent."""

from __future__ import annotations

import functools

from flask import request
from flask_smorest import Blueprint, abort
from marshmallow import Schema, ValidationError, fields, validate

from ..pipeline import Upload
from .common_schemas import LimitedList

_INVALID = "the request is not valid; see errors"


class UploadFormSchema(Schema):
    """The multipart body: validated like a JSON body, and documented in the OpenAPI document."""

    images = LimitedList(
        fields.Raw(metadata={"type": "string", "format": "binary"}), max_items="max_urls", required=True,
        validate=validate.Length(min=1, error="Send at least one file."),
        error_messages={"required": "Send at least one file."},
        metadata={"description": "Image files (JPEG, PNG, WebP, GIF or BMP), in order, each a part named "
                                 "images; errors name a file upload:<index>."})


def takes_uploads(handler):
    """Send multipart/form-data requests to ``handler(uploads)``; any other body goes on to the decorated view."""

    def decorator(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            if request.mimetype == "multipart/form-data":
                return handler(_uploads())
            return view(*args, **kwargs)

        return Blueprint.doc(requestBody={"content": {"multipart/form-data": {"schema": UploadFormSchema}}})(wrapper)

    return decorator


def _uploads() -> list[Upload]:
    """The request's files as pipeline sources, after the form's schema has accepted them."""
    files = request.files  # parses the body: 413 past CLIP_MAX_BODY_BYTES
    if request.form or set(files) - {"images"}:
        # Refused here, not by marshmallow, whose error would echo each unknown name back.
        abort(422, message=_INVALID,
              errors={"_schema": ["Unknown field; send only file parts named images (curl -F images=@cat.jpg)."]})
    try:
        form = UploadFormSchema().load({"images": files.getlist("images")} if "images" in files else {})
    except ValidationError as exc:
        abort(422, message=_INVALID, errors=exc.messages)
    return [Upload(part.stream) for part in form["images"]]
