"""The demo page (GET /demo, and / redirects there): texts against images in the browser.

Plain HTML, CSS and JavaScript from ``static/demo/``, no build step; the page
calls the public API (/embed/text, /embed/image, /classify) like any client.
"""

from __future__ import annotations

from flask import Blueprint, redirect, url_for

from .csp import protect, showing_remote_images

bp = protect(Blueprint("demo", __name__, static_folder="static/demo", static_url_path="/demo/static"))


@bp.get("/")
def root():
    """Send visitors to the demo page."""
    # 302, not 301: browsers keep a 301 for good, and / may show something else one day.
    return redirect(url_for("demo.page"), 302)


@bp.get("/demo")
def page():
    """Serve the demo page."""
    return showing_remote_images(bp.send_static_file("index.html"))
