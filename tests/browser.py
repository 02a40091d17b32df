"""Headless Chromium (Debian's chromium + chromium-driver) through Selenium, and a live app for it to open."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from werkzeug.serving import make_server

from clip_service.web.errors import ApiError, render_envelope

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-proxy-server",  # 127.0.0.1 only, whatever proxy the environment names
    "--hide-scrollbars",  # screenshots without the classic scrollbars' grey gutters
]

# Installed before each page's own scripts (and outside its CSP): records every
# Content-Security-Policy violation, so a test can assert there were none.
_CSP_RECORDER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"}`);
});
"""


def find_chromium() -> tuple[str, str]:
    """The paths of chromium and chromedriver; skip (fail under CI, which installs them) when missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    reason = ("headless Chromium is not installed (apt-get install chromium chromium-driver; "
              ".ci/run does it): the browser tests cannot run")
    if os.environ.get("CI"):
        pytest.fail(reason)  # .ci/run installs both: a skip there would hide a broken install step
    pytest.skip(reason)


def start_chromium(profile: Path):
    """A fresh headless Chromium with its profile in ``profile``, logging the pages' network requests."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = find_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument("--window-size=1280,900")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _CSP_RECORDER})
    driver.get("about:blank")
    requested_urls(driver)  # the start page's own chrome:// requests are not the tests' business
    return driver


def requested_urls(driver) -> list[str]:
    """Every URL the pages asked for since the last call (Chrome's performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def off_origin(urls: list[str], origin: str) -> list[str]:
    """The URLs of ``urls`` that went anywhere but ``origin`` (data: and blob: never leave the browser)."""
    return [u for u in urls if urlsplit(u).scheme not in ("data", "blob") and not u.startswith(origin + "/")]


def csp_violations(driver) -> list[str]:
    return driver.execute_script("return window.__cspViolations || []")


def set_viewport(driver, width: int, height: int) -> None:
    """Make the page ``width`` x ``height`` CSS pixels; narrow widths get a phone's viewport rules."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})


def save_full_page(driver, width: int, paths: list[Path]) -> None:
    """Screenshot the whole page at ``width`` CSS pixels into each of ``paths``."""
    set_viewport(driver, width, 900)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    set_viewport(driver, width, min(int(height), 6000))
    png = driver.get_screenshot_as_png()
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)


class Gate:
    """WSGI middleware that records each POST's Authorization header and hides paths, per test.

    ``hidden`` paths answer 404 (a build without /classify). ``api_key`` sets the
    app's own API keys (clip_service.web.auth): every API call then needs
    ``Authorization: Bearer <api_key>``, exactly as a deployment with CLIP_API_KEYS.
    """

    def __init__(self, app):
        self.app = app
        self.hidden: set[str] = set()
        self.authorizations: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()

    @property
    def api_key(self) -> str | None:
        return self._api_key if hasattr(self, "_api_key") else None

    @api_key.setter
    def api_key(self, key: str | None) -> None:
        self._api_key = key
        self.app.extensions["clip_api_keys"].use_keys([key] if key else [])

    def reset(self) -> None:
        with self._lock:
            self.hidden.clear()
            self.api_key = None
            self.authorizations.clear()

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if environ["REQUEST_METHOD"] == "POST":
            with self._lock:
                self.authorizations.append((path, environ.get("HTTP_AUTHORIZATION")))
        if path in self.hidden:
            return render_envelope(ApiError(404))(environ, start_response)
        return self.app(environ, start_response)


class LiveServer:
    """Serve ``app`` over real HTTP on 127.0.0.1 from a thread, for the browser."""

    def __init__(self, app: Callable):
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.origin = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def url(self, path: str) -> str:
        return self.origin + path

    def __enter__(self) -> LiveServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
