"""multipart/form-data bodies for POST /embed/image: each ``images`` part is an image, in the order sent.

The form may also carry the JSON body's ``encoding`` and ``dimensions`` as plain fields.
"""

from __future__ import annotations

import functools

from flask import request
from flask_smorest import Blueprint, abort
from marshmallow import Schema, ValidationError, fields, validate

from ..pipeline import Upload
from .common_schemas import LimitedList, ModelWidth, encoding_field

_INVALID = "the request is not valid; see errors"


class UploadFormSchema(Schema):
    """The multipart body: validated like a JSON body, and documented in the OpenAPI document."""

    images = LimitedList(
        fields.Raw(metadata={"type": "string", "format": "binary"}), max_items="max_urls", required=True,
        validate=validate.Length(min=1, error="Send at least one file."),
        error_messages={"required": "Send at least one file."},
        metadata={"description": "Image files (JPEG, PNG, WebP, GIF or BMP), in order, each a part named "
                                 "images; errors name a file upload:<index>."})
    encoding = encoding_field()
    dimensions = ModelWidth(strict=False)  # a form's values are text


# The form's fields that are not files.
_FIELDS = frozenset({"encoding", "dimensions"})


def takes_uploads(handler):
    """Send multipart/form-data requests to ``handler(form)`` (UploadFormSchema's fields, ``images`` as uploads);
    any other body goes on to the decorated view."""

    def decorator(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            if request.mimetype == "multipart/form-data":
                return handler(_uploads())
            return view(*args, **kwargs)

        return Blueprint.doc(requestBody={"content": {"multipart/form-data": {"schema": UploadFormSchema}}})(wrapper)

    return decorator


def _uploads() -> dict:
    """The request's form, its files as pipeline sources, after the form's schema has accepted it."""
    files = request.files  # parses the body: 413 past CLIP_MAX_BODY_BYTES
    repeated = any(len(request.form.getlist(name)) > 1 for name in request.form)
    if set(request.form) - _FIELDS or set(files) - {"images"} or repeated:
        # Refused here, not by marshmallow, whose error would echo each unknown name back.
        abort(422, message=_INVALID,
              errors={"_schema": ["Unknown field; send only file parts named images (curl -F images=@cat.jpg), "
                                  "and at most one encoding and one dimensions field."]})
    try:
        form = UploadFormSchema().load({**request.form.to_dict(),
                                        **({"images": files.getlist("images")} if "images" in files else {})})
    except ValidationError as exc:
        abort(422, message=_INVALID, errors=exc.messages)
    return {**form, "images": [Upload(part.stream) for part in form["images"]]}
