"""The Content-Security-Policy (and its companion headers) of the service's HTML pages: /demo and /docs."""

from __future__ import annotations

from flask import Blueprint, Response

# Everything comes from this origin and nothing runs inline: no inline <script>,
# no style="" attribute, no eval. Pages style elements through the CSSOM
# (element.style.x = ...), which CSP allows. img-src adds data: (Swagger UI's
# icons) and blob: (thumbnails of files picked in the demo, read in the browser).
POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data: blob:",
    "connect-src 'self'",
    "font-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])

HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    # The demo's page address never travels to another site with a link.
    "Referrer-Policy": "no-referrer",
}


def _add_headers(response: Response) -> Response:
    response.headers.update(HEADERS)
    return response


def protect(bp: Blueprint) -> Blueprint:
    """Send the pages' security headers with every answer of ``bp``, its static files included."""
    # Three fixed headers on two blueprints: a hook is all it takes, no security-headers library needed.
    bp.after_request(_add_headers)
    return bp
