"""The interactive API page (GET /docs): Swagger UI served by the service itself, no CDN.

Swagger UI's files come from the pinned ``flask-swagger-ui`` package (its
``dist/`` folder is Swagger UI's own release, Apache-2.0, with its LICENSE);
only its files are used, not its blueprint, whose page starts Swagger UI from
an inline script. Ours starts it from ``static/docs/swagger-init.js``, so the
page runs under the same strict Content-Security-Policy as the demo.
"""

from __future__ import annotations

from importlib.resources import files

from flask import Blueprint, abort, render_template, send_from_directory, url_for

from .csp import protect

SWAGGER_UI_DIST = files("flask_swagger_ui") / "dist"
# The two files the page loads (Swagger UI's BaseLayout needs no standalone preset).
SWAGGER_UI_FILES = frozenset({"swagger-ui-bundle.js", "swagger-ui.css"})

bp = protect(Blueprint("docs", __name__, static_folder="static/docs", static_url_path="/docs/static",
                       template_folder="templates"))


@bp.get("/docs")
def page():
    """Serve Swagger UI for the service's OpenAPI document."""
    return render_template("docs/swagger_ui.html", spec_url=url_for("api-docs.openapi_json"))


@bp.get("/docs/swagger-ui/<name>")
def swagger_ui_file(name: str):
    """Serve one of Swagger UI's files."""
    if name not in SWAGGER_UI_FILES:
        abort(404)
    return send_from_directory(SWAGGER_UI_DIST, name)
