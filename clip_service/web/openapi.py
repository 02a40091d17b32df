"""The OpenAPI document (/openapi.json), from flask-smorest; its interactive page (/docs) is ``web/docs.py``."""

from __future__ import annotations

import copy

from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.ext.marshmallow.common import resolve_schema_cls
from flask import Flask
from flask_smorest import Api

from ..config import Settings
from ..pipeline import ModelInfo
from .common_schemas import ErrorEnvelopeSchema


class ServiceApi(Api):
    """flask-smorest's Api, documenting every error with the service's envelope."""

    ERROR_SCHEMA = ErrorEnvelopeSchema


class SchemaPlugin(MarshmallowPlugin):
    """apispec's marshmallow plugin, plus what only the running service knows.

    A field with an ``openapi(settings)`` method (the limits that come from
    settings) adds what it returns to its definition, as does one with an
    ``openapi_model(info)`` method (what the loaded model decides: the
    vectors' width); a schema's ``OPENAPI`` dict (rules across fields) is
    merged into its definition.
    """

    def __init__(self, settings: Settings, model: ModelInfo | None = None):
        super().__init__()
        self.settings = settings
        self.model = model

    def init_spec(self, spec):
        super().init_spec(spec)
        settings, model = self.settings, self.model

        def setting_limits(converter, field, **kwargs) -> dict:
            openapi = getattr(field, "openapi", None)
            found = openapi(settings) if callable(openapi) else {}
            by_model = getattr(field, "openapi_model", None)
            return {**found, **by_model(model)} if callable(by_model) and model is not None else found

        self.converter.add_attribute_function(setting_limits)

    def schema_helper(self, name, definition, schema=None, **kwargs):
        json_schema = super().schema_helper(name, definition, schema=schema, **kwargs)
        extra = getattr(resolve_schema_cls(schema), "OPENAPI", None) if schema is not None else None
        if json_schema is not None and extra:
            json_schema.update(copy.deepcopy(extra))
        return json_schema


def create_api(app: Flask, settings: Settings) -> Api:
    """Attach the API documentation to ``app``, with ``settings``' limits; register blueprints on it next."""
    # With API keys on, every operation needs the bearer key unless it says security: [] (the probes).
    security = {"security": [{"apiKey": []}]} if settings.api_key_list() else {}
    app.config.update({
        "API_TITLE": "clip-service",
        "API_VERSION": "1.0",
        "OPENAPI_VERSION": "3.0.3",
        "OPENAPI_URL_PREFIX": "/",
        "OPENAPI_JSON_PATH": "openapi.json",
        "API_SPEC_OPTIONS": {"info": {"description": (
            "Turns texts and images into L2-normalised CLIP vectors. Bodies are UTF-8 JSON of at most "
            f"{settings.limits.max_body_bytes} bytes (CLIP_MAX_BODY_BYTES; 413 above). Texts longer than the "
            "model's context (77 tokens) are truncated as CLIP does. Every error answers with the "
            "envelope {code, status, message, errors}.")}, **security},
    })
    pipeline = app.extensions.get("clip_pipeline")  # built before the API, so the document names its width
    plugin = SchemaPlugin(settings, pipeline.info if pipeline is not None else None)
    api = ServiceApi(app, spec_kwargs={"marshmallow_plugin": plugin})
    api.spec.components.security_scheme("apiKey", {
        "type": "http", "scheme": "bearer",
        "description": "An API key of CLIP_API_KEYS / CLIP_API_KEYS_FILE, sent as Authorization: Bearer <key>."})
    return api


def add_error_response(api: Api, name: str, schema, description: str) -> None:
    """Add a reusable error response (``#/components/responses/<name>``) for views to reference."""
    api.spec.components.response(name, {"description": description,
                                         "content": {"application/json": {"schema": schema}}})


def error_docs(blueprint, schema, descriptions: dict[int, str], *, default: str | None = None):
    """``documents(*statuses)``: a view decorator documenting those error answers of ``blueprint``.

    ``default`` names a components response that documents every other answer
    (an API with its own error shape); without it they stay the envelope.
    """

    def documents(*statuses: int):
        def decorate(view):
            for status in statuses:
                view = blueprint.alt_response(status, schema=schema, description=descriptions[status])(view)
            return blueprint.doc(responses={"default": default})(view) if default else view

        return decorate

    return documents


# The 4xx answers of every endpoint of the service's own API that takes a JSON body.
BODY_ERRORS = {
    400: "The body is empty, not UTF-8, not JSON, or nested too deeply.",
    413: "The body is larger than CLIP_MAX_BODY_BYTES.",
    415: "The Content-Type is not application/json (UTF-8).",
    422: "The JSON is not a valid request: see errors, field by field.",
}


def documents_body_errors(blueprint):
    """Document the 4xx answers every JSON-body endpoint of ``blueprint`` gives, all in the error envelope."""
    return error_docs(blueprint, ErrorEnvelopeSchema, BODY_ERRORS)(*BODY_ERRORS)
