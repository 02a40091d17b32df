"""The Content-Security-Policy (and its companion headers) of the service's HTML pages: /demo and /docs."""

from __future__ import annotations

from flask import Blueprint, Response


def _policy(img_src: str) -> str:
    return "; ".join([
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        f"img-src {img_src}",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ])


# Everything comes from this origin and nothing runs inline: no inline <script>,
# no style="" attribute, no eval. Pages style elements through the CSSOM
# (element.style.x = ...), which CSP allows. img-src adds data: (Swagger UI's
# icons) and blob: (thumbnails of files picked in the demo, read in the browser).
POLICY = _policy("'self' data: blob:")

# The demo page alone also shows the images whose addresses a person typed: the
# browser loads them itself from there, as any <img> would, since a thumbnail
# made by the service would mean a second download and an endpoint for it. Only
# images: scripts, styles and calls stay this origin's, and Referrer-Policy keeps
# the page's address from those hosts.
DEMO_POLICY = _policy("'self' data: blob: http: https:")

HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    # The demo's page address never travels to another site with a link or an image.
    "Referrer-Policy": "no-referrer",
}


def _add_headers(response: Response) -> Response:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)  # a view's own policy (the demo page's) stays
    return response


def protect(bp: Blueprint) -> Blueprint:
    """Send the pages' security headers with every answer of ``bp``, its static files included."""
    # Three fixed headers on two blueprints: a hook is all it takes, no security-headers library needed.
    bp.after_request(_add_headers)
    return bp


def showing_remote_images(response: Response) -> Response:
    """Give ``response`` (the demo page) the policy that lets it show images from any http(s) address."""
    response.headers["Content-Security-Policy"] = DEMO_POLICY
    return response
