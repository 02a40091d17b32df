"""The demo page and /docs in a real headless Chromium, against the real app over HTTP on 127.0.0.1.

The page's numbers are checked against the API's own answers for the same
inputs; /docs must render with no request leaving the service. Screenshots go
to pytest's tmp dir, and also to $CLIP_SCREENSHOT_DIR when set (the README's
come from ``CLIP_SCREENSHOT_DIR=docs/images python -m pytest tests/test_demo_browser.py``).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import numpy as np
import pytest
import requests

from clip_service import create_app

from .browser import (
    Gate,
    LiveServer,
    csp_violations,
    off_origin,
    requested_urls,
    save_full_page,
    set_viewport,
    start_chromium,
)
from .helpers import FIXTURES
from .support.image_server import ImageServer

pytestmark = pytest.mark.e2e

TEXTS = ["a photo of a cat", "a cup of coffee"]
PHOTOS = [FIXTURES / "chelsea_0.jpg", FIXTURES / "coffee_0.jpg"]
BLOCKED_URL = "http://127.0.0.1:1/x.jpg"  # loopback, and a port outside the allowed ones
WAIT_S = 60


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def images_host(photos):
    with ImageServer() as server:
        server.add("/camera.png", photos["camera.png"], "image/png")
        yield server


@pytest.fixture(scope="module")
def service(tiny_embedder, images_host):
    # The same settings as the ``app`` fixture: only the test image server is exempt from the
    # private-address block, and JPEGs decode in full.
    app = create_app({"TESTING": True, "fetch_allow": f"{images_host.host}:{images_host.port}",
                      "jpeg_draft": False}, embedder=tiny_embedder)
    gate = Gate(app)
    with LiveServer(gate) as server:
        server.app, server.gate, server.images = app, gate, images_host
        yield server


@pytest.fixture
def live(service, browser):
    service.gate.reset()
    yield service
    service.gate.reset()


def data_uri(path: Path) -> str:
    kind = "png" if path.suffix == ".png" else "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode()


def wait_for(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(lambda d: condition(d), message=what)


def open_demo(driver, live) -> None:
    set_viewport(driver, 1280, 900)
    driver.get(live.url("/"))  # the root redirects to the page
    assert driver.current_url == live.url("/demo")
    driver.execute_script("sessionStorage.clear(); localStorage.clear();")
    driver.refresh()
    wait_for(driver, lambda d: d.execute_script("return document.readyState") == "complete", "the page to load")


def element(driver, css: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css)


def elements(driver, css: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, css)


def fill_in(driver, texts: list[str], photos: list[Path], urls: list[str]) -> None:
    from selenium.webdriver.common.keys import Keys

    element(driver, "#texts").send_keys("\n".join(texts))
    if photos:
        element(driver, "#image-files").send_keys("\n".join(str(p) for p in photos))
    for url in urls:
        element(driver, "#image-url").send_keys(url + Keys.ENTER)  # Enter adds the address
    count = len(photos) + len(urls)
    wait_for(driver, lambda d: len(elements(d, "#image-list li")) == count, f"{count} images in the list")


def wait_until_compared(driver) -> str:
    """Wait for the run to end; return the status line."""
    wait_for(driver, lambda d: element(d, "#compare").is_enabled()
             and "Comparing" not in element(d, "#status").text, "the comparison to finish")
    return element(driver, "#status").text


def wait_for_labels(driver) -> str:
    wait_for(driver, lambda d: element(d, "#labels").is_displayed()
             and "Asking" not in element(d, "#labels-note").text, "the label section to settle")
    return element(driver, "#labels-note").text


def read_heatmap(driver) -> dict:
    """The table as the page shows it: column texts, and per row its cells' values or its error."""
    return driver.execute_script("""
        const table = document.getElementById("heatmap");
        const texts = [...table.querySelectorAll("thead th.text-col")].map((th) => th.textContent);
        const rows = [...table.querySelectorAll("tbody tr")].map((tr) => {
          const error = tr.querySelector(".error-cell .item-error");
          if (error) return {error: {code: error.dataset.code, text: error.textContent}};
          return {cells: [...tr.querySelectorAll("td.cell")].map((td) => ({
            value: Number(td.dataset.value), shown: td.firstChild.textContent,
            best: td.classList.contains("best")}))};
        });
        return {texts, rows};
    """)


def api_cosines(live, texts: list[str], sources: list[str]) -> tuple[np.ndarray, list[dict]]:
    """Cosines computed from /embed/text and /embed/image's own answers; failed images' rows are NaN."""
    text = requests.post(live.url("/embed/text"), json={"texts": texts}, timeout=WAIT_S)
    image = requests.post(live.url("/embed/image"), json={"urls": sources}, timeout=WAIT_S)
    assert text.status_code == 200 and image.status_code == 200
    t = np.array(text.json()["embeddings"], dtype=np.float64)
    rows = []
    for vector in image.json()["embeddings"]:
        if not vector:
            rows.append([np.nan] * len(texts))
            continue
        v = np.array(vector, dtype=np.float64)
        rows.append((t @ v) / (np.linalg.norm(t, axis=1) * np.linalg.norm(v)))
    return np.array(rows), image.json()["errors"]


def screenshot_paths(tmp_path: Path, name: str) -> list[Path]:
    paths = [tmp_path / name]
    if os.environ.get("CLIP_SCREENSHOT_DIR"):
        paths.append(Path(os.environ["CLIP_SCREENSHOT_DIR"]) / name)
    return paths


def test_the_heatmap_shows_the_apis_cosines_and_each_failed_images_error(browser, live, tmp_path):
    open_demo(browser, live)
    requested_urls(browser)  # start the network record here
    good_url = live.images.url("/camera.png")
    fill_in(browser, TEXTS, PHOTOS, [good_url, BLOCKED_URL])
    element(browser, "#compare").click()
    status = wait_until_compared(browser)
    assert "1 image failed" in status

    shown = read_heatmap(browser)
    expected, errors = api_cosines(live, TEXTS, [data_uri(p) for p in PHOTOS] + [good_url, BLOCKED_URL])
    assert shown["texts"] == TEXTS
    assert len(shown["rows"]) == 4
    for i in range(3):  # the two uploads and the downloaded image
        cells = shown["rows"][i]["cells"]
        assert [c["value"] for c in cells] == pytest.approx(list(expected[i]), abs=1e-3)
        assert [c["shown"] for c in cells] == [f"{c['value']:.3f}" for c in cells]
        assert [c["best"] for c in cells] == [j == int(np.argmax(expected[i])) for j in range(len(TEXTS))]
    # The blocked address: its own row says why, with the API's code and message; never a blank.
    assert [e["index"] for e in errors] == [3] and errors[0]["code"] == "blocked_url"
    assert shown["rows"][3]["error"] == {"code": "blocked_url", "text": f"blocked_url: {errors[0]['message']}"}

    wait_for_labels(browser)
    assert csp_violations(browser) == []
    # Nothing from another origin but the images whose addresses were typed, which the browser shows.
    assert set(off_origin(requested_urls(browser), live.origin)) <= {good_url, BLOCKED_URL}

    wait_for(browser, lambda d: d.execute_script("return [...document.images].every((img) => img.complete)"),
             "the thumbnails to load")
    element(browser, "h1").click()  # the pointer off the button, so the pictures show no hover state
    for width in (1280, 390):
        save_full_page(browser, width, screenshot_paths(tmp_path, f"demo-{width}.png"))
        # At a phone's width the table scrolls inside its box; the page itself never scrolls sideways.
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"the page is {overflow}px wider than a {width}px screen"
    set_viewport(browser, 1280, 900)


THUMBNAILS = """
    return [...document.querySelectorAll(arguments[0])].map((thumb) => thumb.tagName === "IMG"
      ? {src: thumb.src.startsWith("blob:") ? "blob:" : thumb.src, loaded: thumb.complete && thumb.naturalWidth > 0}
      : {tile: thumb.textContent});
"""


def thumbnails(driver, where: str) -> list[dict]:
    """Each thumbnail under ``where``: an image (its address, whether it loaded) or the placeholder tile."""
    return driver.execute_script(THUMBNAILS, f"{where} .thumb")


def test_every_image_shows_its_thumbnail_and_an_address_that_will_not_load_keeps_the_tile(browser, live):
    open_demo(browser, live)
    good_url, missing_url = live.images.url("/camera.png"), live.images.url("/missing.png")
    fill_in(browser, TEXTS, PHOTOS[:1], [good_url, missing_url, BLOCKED_URL])
    element(browser, "#compare").click()
    wait_until_compared(browser)
    wait_for_labels(browser)
    # The browser loads the addresses itself, from the loopback image host: the one there shows,
    # the missing one (404) and the refused one keep today's "URL" tile.
    expected = [{"src": "blob:", "loaded": True}, {"src": good_url, "loaded": True}, {"tile": "URL"}, {"tile": "URL"}]
    for where in ("#image-list li", "#heatmap tbody th", "#label-cards figcaption"):
        wait_for(browser, lambda d: thumbnails(d, where) == expected, f"the thumbnails in {where}: {expected}")
    assert csp_violations(browser) == []
    assert browser.execute_script(
        "return document.querySelector('#heatmap tbody th img[src^=\"http\"]').naturalWidth") == 512


def test_the_docs_page_keeps_images_from_elsewhere_out(browser, live):
    # /docs keeps the strict policy: the same image the demo shows is refused there.
    good_url = live.images.url("/camera.png")
    for path, allowed in (("/demo", True), ("/docs", False)):
        browser.get(live.url(path))
        wait_for(browser, lambda d: d.execute_script("return document.readyState") == "complete", f"{path} to load")
        loaded = browser.execute_async_script("""
            const [url, done] = arguments;
            const img = new Image();
            img.onload = () => done(img.naturalWidth > 0);
            img.onerror = () => done(false);
            img.src = url;
        """, good_url)
        assert loaded is allowed, path
        blocked = [v for v in csp_violations(browser) if v.startswith("img-src")]
        assert blocked == ([] if allowed else [f"img-src blocked {good_url}"]), path


def test_images_can_be_dropped_and_pasted(browser, live):
    # Selenium cannot drag a file from the desktop: the page gets the same events, built in the page,
    # with the photos' bytes in their DataTransfer, as a browser builds them for a drop or a paste.
    open_demo(browser, live)
    element(browser, "#texts").send_keys("\n".join(TEXTS))
    browser.execute_script("""
        const [dropped, pasted, address] = arguments;
        const transfer = (name, b64) => {
          const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
          const data = new DataTransfer();
          data.items.add(new File([bytes], name, {type: "image/jpeg"}));
          return data;
        };
        document.getElementById("drop-zone").dispatchEvent(
          new DragEvent("drop", {bubbles: true, cancelable: true, dataTransfer: transfer(...dropped)}));
        document.body.dispatchEvent(
          new ClipboardEvent("paste", {bubbles: true, cancelable: true, clipboardData: transfer(...pasted)}));
        const text = new DataTransfer();
        text.setData("text/plain", address);
        document.body.dispatchEvent(
          new ClipboardEvent("paste", {bubbles: true, cancelable: true, clipboardData: text}));
    """, [PHOTOS[0].name, base64.b64encode(PHOTOS[0].read_bytes()).decode()],
         [PHOTOS[1].name, base64.b64encode(PHOTOS[1].read_bytes()).decode()], BLOCKED_URL)
    names = [e.text for e in elements(browser, "#image-list .image-name")]
    assert names == [PHOTOS[0].name, PHOTOS[1].name, "127.0.0.1:1/…/x.jpg"]

    element(browser, "#compare").click()
    wait_until_compared(browser)
    shown = read_heatmap(browser)
    expected, _ = api_cosines(live, TEXTS, [data_uri(p) for p in PHOTOS])
    for i in range(2):
        assert [c["value"] for c in shown["rows"][i]["cells"]] == pytest.approx(list(expected[i]), abs=1e-3)
    assert shown["rows"][2]["error"]["code"] == "blocked_url"
    assert csp_violations(browser) == []


def test_the_label_bars_show_classifys_scores(browser, live, tmp_path):
    open_demo(browser, live)
    fill_in(browser, TEXTS, PHOTOS, [BLOCKED_URL])
    element(browser, "#compare").click()
    wait_until_compared(browser)
    wait_for_labels(browser)
    answer = requests.post(live.url("/classify"), json={
        "inputs": [data_uri(p) for p in PHOTOS] + [BLOCKED_URL],
        "parameters": {"candidate_labels": TEXTS}}, timeout=WAIT_S)
    assert answer.status_code == 200
    cards = browser.execute_script("""
        return [...document.querySelectorAll("#label-cards .label-card")].map((card) => ({
          bars: [...card.querySelectorAll(".bars li")].map((li) => [li.dataset.label, Number(li.dataset.score)]),
          error: card.querySelector(".item-error")?.dataset.code || null}));
    """)
    results, errors = answer.json()["results"], answer.json()["errors"]
    assert len(cards) == 3
    for card, result in zip(cards[:2], results[:2]):
        assert [label for label, _ in card["bars"]] == [r["label"] for r in result]
        assert [score for _, score in card["bars"]] == pytest.approx([r["score"] for r in result], abs=1e-3)
    assert cards[2] == {"bars": [], "error": errors[0]["code"]}
    save_full_page(browser, 1280, screenshot_paths(tmp_path, "demo-labels-1280.png"))
    set_viewport(browser, 1280, 900)


def test_without_classify_the_bars_give_way_to_a_note(browser, live):
    live.gate.hidden.add("/classify")  # a build without the route, even after it lands
    open_demo(browser, live)
    fill_in(browser, TEXTS[:1], PHOTOS[:1], [])
    element(browser, "#compare").click()
    wait_until_compared(browser)
    note = wait_for_labels(browser)
    assert "POST /classify" in note and "does not offer" in note
    assert elements(browser, "#label-cards .label-card") == []
    assert len(read_heatmap(browser)["rows"]) == 1
    assert ("/classify", None) in live.gate.authorizations  # it was asked, and its 404 understood


def test_the_api_key_is_sent_as_a_bearer_token_and_kept_in_this_tab_only(browser, live):
    live.gate.api_key = "demo-key-0123456789"
    open_demo(browser, live)
    fill_in(browser, TEXTS, PHOTOS[:1], [])
    element(browser, "#compare").click()
    status = wait_until_compared(browser)
    # Refused without a key: said so, and the key field opened and focused.
    assert "needs an API key" in status and "401" in status
    assert element(browser, "#key-panel").get_attribute("open") is not None
    assert browser.switch_to.active_element.get_attribute("id") == "api-key"
    assert not element(browser, "#results").is_displayed()

    browser.switch_to.active_element.send_keys("wrong-key")
    element(browser, "#compare").click()
    assert "did not accept this API key" in wait_until_compared(browser)

    field = element(browser, "#api-key")
    field.clear()
    field.send_keys("demo-key-0123456789")
    live.gate.authorizations.clear()
    element(browser, "#compare").click()
    wait_until_compared(browser)
    assert element(browser, "#results").is_displayed()
    assert len(read_heatmap(browser)["rows"]) == 1
    wait_for_labels(browser)
    called = {path for path, _ in live.gate.authorizations}
    assert {"/embed/text", "/embed/image", "/classify"} <= called
    assert {auth for _, auth in live.gate.authorizations} == {"Bearer demo-key-0123456789"}

    stored = browser.execute_script(
        "return [JSON.stringify(sessionStorage), localStorage.length, document.cookie]")
    assert "demo-key-0123456789" in stored[0] and stored[1:] == [0, ""]
    browser.refresh()  # the same tab keeps it
    assert element(browser, "#api-key").get_attribute("value") == "demo-key-0123456789"


def test_the_page_works_from_the_keyboard_with_a_label_on_every_control(browser, live):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    open_demo(browser, live)
    set_viewport(browser, 390, 844)
    element(browser, "#key-panel summary").click()  # the key field is hidden, and so nameless, until opened
    controls = elements(browser, "input, textarea, button, select, summary")
    assert controls
    unnamed = [c.get_attribute("id") or c.tag_name for c in controls if not c.accessible_name.strip()]
    assert unnamed == []

    # Tab through the page from the top: every control of the form is reached, in reading order.
    element(browser, "#key-panel summary").click()
    element(browser, "h1").click()
    reached = []
    for _ in range(25):
        ActionChains(browser).send_keys(Keys.TAB).perform()  # the keyboard, not one element's send_keys
        focused = browser.switch_to.active_element
        reached.append(focused.get_attribute("id") or focused.tag_name)
    order = ["texts", "image-url", "add-url", "image-files", "summary", "compare"]
    assert [r for r in reached if r in order][:len(order)] == order

    # Typing only: texts, an address with Enter, then Ctrl+Enter in the texts compares.
    element(browser, "#texts").send_keys("a red bus")
    url_field = element(browser, "#image-url")
    url_field.send_keys(BLOCKED_URL + Keys.ENTER)
    assert browser.switch_to.active_element.get_attribute("id") == "image-url"
    element(browser, "#texts").send_keys(Keys.CONTROL, Keys.ENTER)
    wait_until_compared(browser)
    assert read_heatmap(browser)["rows"][0]["error"]["code"] == "blocked_url"
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0
    set_viewport(browser, 1280, 900)


def test_docs_render_every_operation_with_nothing_from_another_origin(browser, live, tmp_path):
    spec = requests.get(live.url("/openapi.json"), timeout=WAIT_S).json()
    operations = sum(1 for item in spec["paths"].values() for method in item
                     if method in ("get", "post", "put", "patch", "delete"))
    set_viewport(browser, 1280, 900)
    requested_urls(browser)
    browser.get(live.url("/docs"))
    wait_for(browser, lambda d: len(elements(d, ".opblock")) >= operations, f"{operations} operations rendered")
    shown_paths = {e.text.replace("\u200b", "") for e in elements(browser, ".opblock-summary-path")}
    assert set(spec["paths"]) <= shown_paths
    save_full_page(browser, 1280, screenshot_paths(tmp_path, "docs-1280.png")[:1])
    set_viewport(browser, 1280, 900)

    # "Try it out" works too: the call goes to this service and its answer is shown.
    element(browser, "#operations-embeddings-post_embed_text .opblock-summary-control").click()
    wait_for(browser, lambda d: elements(d, ".try-out__btn"), "the operation to open").pop().click()
    wait_for(browser, lambda d: elements(d, ".btn.execute"), "the Execute button").pop().click()
    wait_for(browser, lambda d: elements(d, ".live-responses-table tbody .response-col_status"), "the answer")
    assert element(browser, ".live-responses-table tbody .response-col_status").text.strip() == "200"
    assert '"embeddings"' in element(browser, ".live-responses-table tbody .response-col_description").text

    assert csp_violations(browser) == []
    urls = requested_urls(browser)
    for path in ("/openapi.json", "/docs/swagger-ui/swagger-ui-bundle.js", "/embed/text"):
        assert live.url(path) in urls
    assert off_origin(urls, live.origin) == []
