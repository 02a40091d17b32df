"""multipart/form-data uploads to POST /embed/image: each ``images`` part is an image, in the order sent."""

from __future__ import annotations

import functools
import logging

from flask import current_app, request
from flask_smorest import Blueprint, abort
from marshmallow import Schema, fields, validate

from ..images.decoding import ImageDecodeError
from ..images.fetcher import FetchError
from ..images.sources import LocalImages
from .schemas import LimitedList

log = logging.getLogger(__name__)


class UploadFormSchema(Schema):
    """The multipart body, for the OpenAPI document (files are read by hand: they are not JSON)."""

    images = LimitedList(
        fields.Raw(metadata={"type": "string", "format": "binary"}), max_items="max_urls", required=True,
        validate=validate.Length(min=1),
        metadata={"description": "Image files (JPEG, PNG, WebP, GIF or BMP), in order, each a part named "
                                 "images; errors name a file upload:<index>."})


def upload_label(index: int) -> str:
    # Not the client's file name: it may hold anything, and the index already identifies the file.
    return f"upload:{index}"


def takes_uploads(handler):
    """Send multipart/form-data requests to ``handler``; any other body goes on to the decorated view."""

    def decorator(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            if request.mimetype == "multipart/form-data":
                return handler()
            return view(*args, **kwargs)

        return Blueprint.doc(requestBody={"content": {"multipart/form-data": {"schema": UploadFormSchema}}})(wrapper)

    return decorator


def read_uploads() -> tuple[list[str], list]:
    """The uploaded files' labels and, for each, an RGB image or a FetchError (the fetcher's limits apply)."""
    files = request.files.getlist("images")  # parses the body: 413 past CLIP_MAX_BODY_BYTES
    if request.form or set(request.files) - {"images"}:
        abort(422, message="the request is not valid; see errors",
              errors={"_schema": ["Unknown field; send only file parts named images (curl -F images=@cat.jpg)."]})
    if not files:
        abort(422, message="the request is not valid; see errors", errors={"images": ["Send at least one file."]})
    limit = current_app.config["CLIP"].max_urls
    if len(files) > limit:
        abort(422, message="the request is not valid; see errors",
              errors={"images": [f"At most {limit} items per request."]})
    local: LocalImages = current_app.extensions["clip_local_images"]
    images: list = []
    for index, upload in enumerate(files):
        try:
            images.append(local.from_upload(upload.stream))
        except ImageDecodeError as exc:
            log.warning("uploaded image failed: code=%s index=%d", exc.code, index)
            images.append(FetchError(exc.code, exc.message))
    return [upload_label(i) for i in range(len(files))], images
