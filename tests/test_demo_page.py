"""The demo page and /docs without a browser: redirects, headers, content types, and no other origin."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from clip_service.web import docs
from clip_service.web.csp import DEMO_POLICY, POLICY

WEB = Path(docs.__file__).parent
DEMO_FILES = sorted((WEB / "static" / "demo").iterdir())
DOCS_FILES = sorted((WEB / "static" / "docs").iterdir())
JS = ("text/javascript", "application/javascript")

# A URL with a host: scheme://host or a protocol-relative //host.
OTHER_ORIGIN = re.compile(r"(?:\b[a-z][a-z0-9+.-]*:)?//[a-z0-9-]+(?:\.[a-z0-9-]+)*(?::\d+)?(?=[/\"'\s)?#]|$)",
                          re.IGNORECASE)
JS_IMPORT = re.compile(r"""^\s*import\b[^"']*["']([^"']+)["']""", re.MULTILINE)


class PageParser(HTMLParser):
    """Collect what a page loads and anything that would run or style inline."""

    def __init__(self):
        super().__init__()
        self.references: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "href", "action", "formaction", "poster"):
            if attrs.get(name) is not None:
                self.references.append(attrs[name])
        for name in attrs:
            if name == "style" or name.startswith("on"):
                self.inline.append(f"<{tag} {name}=...>")
        if tag == "style":
            self.inline.append("<style>")
        if tag == "script" and not attrs.get("src"):
            self._in_script = True

    def handle_endtag(self, tag):
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data):
        if self._in_script:
            self.inline.append(f"<script>{data.strip()[:40]}")


def parse(html: str) -> PageParser:
    parser = PageParser()
    parser.feed(html)
    return parser


def directives(policy: str) -> dict[str, list[str]]:
    return {name: values for name, *values in (part.split() for part in policy.split(";"))}


def test_the_root_redirects_to_the_demo(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response.headers["Location"] == "/demo"
    assert response.headers["Content-Security-Policy"] == POLICY


def test_the_policy_allows_nothing_inline_and_nothing_from_elsewhere():
    policy = directives(POLICY)
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"] and policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'"]
    assert set(policy["img-src"]) <= {"'self'", "data:", "blob:"}
    assert policy["frame-ancestors"] == ["'none'"] and policy["object-src"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    assert "unsafe" not in POLICY and "*" not in POLICY and "http" not in POLICY


def test_the_demo_pages_policy_differs_only_in_showing_images_from_any_web_address():
    demo, strict = directives(DEMO_POLICY), directives(POLICY)
    assert demo["img-src"] == strict["img-src"] + ["http:", "https:"]
    assert {k: v for k, v in demo.items() if k != "img-src"} == {k: v for k, v in strict.items() if k != "img-src"}


@pytest.mark.parametrize("path, content_type, policy", [
    ("/demo", "text/html", DEMO_POLICY),  # the one page that shows images from the addresses typed in it
    ("/demo/static/demo.css", "text/css", POLICY),
    ("/demo/static/demo.js", JS, POLICY),
    ("/demo/static/api.js", JS, POLICY),
    ("/demo/static/images.js", JS, POLICY),
    ("/demo/static/results.js", JS, POLICY),
    ("/docs", "text/html", POLICY),
    ("/docs/static/docs.css", "text/css", POLICY),
    ("/docs/static/swagger-init.js", JS, POLICY),
    ("/docs/swagger-ui/swagger-ui-bundle.js", JS, POLICY),
    ("/docs/swagger-ui/swagger-ui.css", "text/css", POLICY),
])
def test_pages_and_their_files_come_with_their_type_and_the_policy(client, path, content_type, policy):
    response = client.get(path)
    assert response.status_code == 200
    assert response.mimetype in (content_type if isinstance(content_type, tuple) else (content_type,))
    assert response.headers["Content-Security-Policy"] == policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"


def test_the_api_keeps_its_own_headers(client):
    response = client.post("/embed/text", json={"texts": ["a cat"]})
    assert response.status_code == 200 and "Content-Security-Policy" not in response.headers


@pytest.mark.parametrize("path", ["/demo", "/docs"])
def test_pages_run_nothing_inline_and_load_only_from_this_service(client, path):
    page = parse(client.get(path).get_data(as_text=True))
    assert page.inline == []
    assert page.references
    for reference in page.references:
        assert reference.startswith("data:") or not OTHER_ORIGIN.search(reference), reference
        assert not reference.lower().startswith("javascript:"), reference
        # Each file the page names is served (paths in the demo are relative to /demo).
        if not reference.startswith("data:"):
            assert client.get(reference if reference.startswith("/") else "/" + reference).status_code == 200


@pytest.mark.parametrize("file", DEMO_FILES + DOCS_FILES, ids=lambda p: p.name)
def test_no_file_of_the_pages_names_another_origin(file):
    text = file.read_text(encoding="utf-8")
    assert OTHER_ORIGIN.findall(text) == []


def test_every_module_the_demo_imports_is_served(client):
    modules = {"demo.js"}
    seen = set()
    while modules - seen:
        name = (modules - seen).pop()
        seen.add(name)
        response = client.get(f"/demo/static/{name}")
        assert response.status_code == 200, name
        for specifier in JS_IMPORT.findall(response.get_data(as_text=True)):
            assert specifier.startswith("./"), specifier  # relative: same origin, same folder
            modules.add(specifier[2:])
    assert seen == {p.name for p in DEMO_FILES if p.suffix == ".js"}


def test_the_other_origin_check_sees_the_forms_that_matter():
    for bad in ("https://cdn.example.com/x.js", "//cdn.example.com/x.js", "http://127.0.0.1:8080/",
                'url("https://fonts.example/f.woff2")'):
        assert OTHER_ORIGIN.search(bad), bad
    for fine in ("demo/static/demo.js", "/docs/swagger-ui/swagger-ui.css", "data:,", "// a comment",
                 r"/^https?:\/\/\S+$/i"):
        assert not OTHER_ORIGIN.search(fine), fine


def test_swagger_ui_is_served_from_the_pinned_package_with_its_license(client):
    bundle = client.get("/docs/swagger-ui/swagger-ui-bundle.js")
    assert bundle.get_data() == (docs.SWAGGER_UI_DIST / "swagger-ui-bundle.js").read_bytes()
    assert b"SwaggerUIBundle" in bundle.get_data()
    assert "Apache License" in (docs.SWAGGER_UI_DIST / "LICENSE").read_text()


@pytest.mark.parametrize("name", ["swagger-ui-standalone-preset.js", "VERSION", "..%2fflask_swagger_ui.py",
                                  "index.template.html"])
def test_only_the_pages_swagger_files_are_served(client, name):
    response = client.get(f"/docs/swagger-ui/{name}")
    assert response.status_code == 404 and response.get_json()["code"] == 404


def test_the_docs_page_starts_swagger_ui_on_this_services_document(client):
    page = client.get("/docs").get_data(as_text=True)
    assert 'data-spec-url="/openapi.json"' in page
    init = client.get("/docs/static/swagger-init.js").get_data(as_text=True)
    assert "validatorUrl: null" in init  # Swagger UI's default would ask validator.swagger.io


def test_the_pages_are_not_api_operations(client):
    paths = set(client.get("/openapi.json").get_json()["paths"])
    assert not {p for p in paths if p == "/" or p.startswith(("/demo", "/docs"))}
