"""Browser tests: Playwright drives Debian Chromium against a real uvicorn server on a free local port.

Screenshots go to test-artifacts/ (kept by CI as artefacts).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-dev-shm-usage"]



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serving(app):
    """Run ``app`` with uvicorn on a free local port in a thread; yields its URL."""
    import uvicorn

    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.time() + 120  # a bound for a loaded machine, not a speed check
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "the server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        t.join(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory, shapes_index, tiny_blip, tiny_vit):
    from vlens.web.app import create_app

    index, root = shapes_index(tmp_path_factory.mktemp("browser"))
    app = create_app(index=index, captioner=str(tiny_blip), backbone=str(tiny_vit))
    with _serving(app) as url:
        yield url, root


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        msg = (f"no Chromium at {CHROMIUM}: `bash scripts/install.sh` installs it as root with apt-get; otherwise "
               "run `sudo apt-get install -y --no-install-recommends chromium chromium-driver`")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ARTIFACTS.mkdir(exist_ok=True)
    ctx = browser.new_context(viewport={"width": 1200, "height": 820})
    pg = ctx.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors: {errors}"


def test_search_shows_images_with_scores(server, page):
    url, _ = server
    page.goto(url)
    page.wait_for_selector("#index-info:has-text('12 images')")
    page.fill("#query", "a red circle")
    page.fill("#k", "6")
    page.click("#search-btn")
    page.wait_for_selector("#results .score")
    cards = page.locator("#results .card")
    assert cards.count() == 6
    scores = [float(s) for s in page.locator("#results .score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    # Every thumbnail actually loaded (served by id).
    page.wait_for_function("[...document.querySelectorAll('#results img')].every(i => i.complete && "
                           "i.naturalWidth > 0)")
    assert "results for" in page.inner_text("#search-status")
    page.screenshot(path=str(ARTIFACTS / "web-search.png"), full_page=True)
    cards.first.click()  # enlarge
    page.wait_for_selector("#lightbox:not([hidden])")
    page.wait_for_function("document.getElementById('lightbox-img').naturalWidth > 0")
    assert page.inner_text("#lightbox-text").startswith("#1")
    page.screenshot(path=str(ARTIFACTS / "web-search-enlarged.png"))
    page.keyboard.press("Escape")
    page.wait_for_selector("#lightbox", state="hidden")


def _open_hit(page, rank: int) -> None:
    page.locator("#results .card").nth(rank).click()
    page.wait_for_selector("#lightbox:not([hidden])")


def test_a_found_image_goes_to_match_caption_and_explore(server, page):
    """From a search hit's enlarged view, one click sends the indexed image to another tab as if uploaded."""
    url, _ = server
    page.goto(url)
    page.wait_for_selector("#index-info:has-text('12 images')")
    page.fill("#query", "a red circle")
    page.click("#search-btn")
    page.wait_for_selector("#results .score")
    for rank, use in ((0, "match-a"), (1, "match-b")):
        page.click("#tab-search")
        _open_hit(page, rank)
        page.click(f"#lightbox-use button[data-use='{use}']")
        page.wait_for_selector("#lightbox", state="hidden")
        assert page.locator("#panel-match").is_visible()
        page.wait_for_function(f"document.getElementById('{use}').files.length === 1 && "
                               f"document.getElementById('preview-{use[-1]}').naturalWidth > 0")
    assert "from the index is ready" in page.inner_text("#match-status")
    page.click("#match-btn")
    page.wait_for_function("document.getElementById('match-result').naturalWidth > 0")
    assert "matches by" in page.inner_text("#match-status")

    page.click("#tab-search")
    _open_hit(page, 2)
    page.click("#lightbox-use button[data-use='caption']")
    page.wait_for_function("document.getElementById('caption-file').files.length === 1")
    page.click("#caption-btn")
    page.wait_for_selector("#captions li")

    for rank, which in ((0, "a"), (1, "b")):
        page.click("#tab-search")
        _open_hit(page, rank)
        page.click(f"#lightbox-use button[data-use='explore-{which}']")
        page.wait_for_function(f"window.vlensExplore.{which} !== null && "
                               f"document.getElementById('explore-img-{which}').naturalWidth > 0")
    assert page.locator("#panel-explore").is_visible()
    assert "click anywhere on the first image" in page.inner_text("#explore-status")


def test_search_by_uploaded_image(server, page):
    url, root = server
    page.goto(url)
    page.set_input_files("#query-image", str(root / "test_00004.png"))
    page.wait_for_selector("#results .score")
    assert page.locator("#results .path").first.inner_text() == "test_00004.png"


def test_search_tab_opens_on_the_library_and_takes_combined_queries(server, page):
    """No query yet: the grid is the library itself (with the skip count); an empty query browses again; a
    combined query with a minus term ranks like the API; the duplicates view lists groups."""
    url, _ = server
    page.goto(url)
    page.wait_for_selector("#results .card")
    assert page.locator("#results .card").count() == 12 and page.locator("#results .score").count() == 0
    assert "library: showing 12 of 12 images" in page.inner_text("#search-status")
    page.fill("#f-folder", "elsewhere")  # no such folder: nothing passes, said so
    page.click("#browse-btn")
    page.wait_for_selector("#search-status:has-text('showing 0 of 0 images')")
    page.fill("#f-folder", "")
    page.fill("#query", "2:a red circle - a blue square")
    page.click("#search-btn")
    page.wait_for_selector("#results .score")
    import json
    import urllib.request

    body = json.dumps({"query": "2:a red circle - a blue square", "k": 12}).encode()
    req = urllib.request.Request(url + "/api/search", body, {"Content-Type": "application/json"})
    want = [h["path"] for h in json.load(urllib.request.urlopen(req))["hits"]]
    assert page.locator("#results .path").all_inner_texts() == want
    page.fill("#query", "")
    page.click("#search-btn")
    page.wait_for_selector("#search-status:has-text('library: showing 12')")
    page.click("#dupes-btn")
    page.wait_for_selector("#search-status:has-text('duplicates')")


def test_caption_appears_for_an_upload(server, page):
    url, root = server
    page.goto(url)
    page.click("#tab-caption")
    page.set_input_files("#caption-file", str(root / "test_00002.png"))
    page.select_option("#strategy", "sample")
    page.fill("#n", "2")
    page.fill("#temperature", "0.8")
    page.click("#caption-btn")
    page.wait_for_selector("#captions li.caption")
    assert page.locator("#captions li.caption").count() == 2
    assert "sample" in page.inner_text("#caption-status")
    page.screenshot(path=str(ARTIFACTS / "web-caption.png"), full_page=True)
    # "no prompt" greys out the prompt field and still captions (the form sends no_prompt=true, not a clash)
    page.fill("#prompt", "")
    page.check("#no-prompt")
    assert page.is_disabled("#prompt")
    page.select_option("#strategy", "greedy")
    page.fill("#n", "1")
    page.click("#caption-btn")
    page.wait_for_function("document.querySelectorAll('#captions li.caption').length === 1")
    assert "error" not in (page.get_attribute("#caption-status", "class") or "")


def test_match_picture_appears(server, page):
    url, root = server
    page.goto(url)
    page.click("#tab-match")
    page.set_input_files("#match-a", str(root / "test_00001.png"))
    page.set_input_files("#match-b", str(root / "test_00003.png"))
    page.select_option("#score", "feature")
    page.fill("#count", "12")
    assert page.input_value("#refine") == "quadratic"  # the default, as `vlens match`
    page.select_option("#refine", "soft")
    page.click("#match-btn")
    page.wait_for_function("document.getElementById('match-status').textContent.length > 0 && "
                           "!document.getElementById('match-btn').disabled")
    page.wait_for_function("document.getElementById('match-result').naturalWidth > 0")
    assert "top 12 matches by feature" in page.inner_text("#match-status")
    assert "refine soft" in page.inner_text("#match-status")
    page.screenshot(path=str(ARTIFACTS / "web-match.png"), full_page=True)


# ---------------------------------------------------------------------------------------------- Explore tab


@pytest.fixture(scope="module")
def explore_server(tmp_path_factory, tiny_blip):
    """A server with the embedded DINO backbone, and a photo with a shifted crop of itself on disk."""
    from vlens.data.photos import photo_paths
    from vlens.images import load_image
    from vlens.web.app import create_app

    base = tmp_path_factory.mktemp("explore")
    img = load_image(photo_paths(("chelsea",))[0])  # 451 x 300
    img.save(base / "cat.png")
    img.crop((40, 24, 440, 300)).save(base / "cat_shifted.png")  # A's pixel p is B's p - (40, 24)
    app = create_app(captioner=str(tiny_blip), backbone="builtin:dino-tiny")
    with _serving(app) as url:
        yield url, base


def test_a_builtin_backbone_shows_a_notice_with_the_command_for_the_real_one(explore_server, page):
    url, _ = explore_server
    page.goto(url)
    notice = page.locator("#model-notice")
    notice.wait_for(state="visible")
    text = notice.inner_text()
    assert "Match runs the embedded builtin:dino-tiny" in text and "vlens models fetch facebook/dino-vits8" in text
    assert "Caption runs" not in text  # the caption model here is a local folder


def test_real_models_show_no_notice(server, page):
    url, _ = server
    page.goto(url)
    page.wait_for_function("document.getElementById('index-info').textContent.length > 0")
    assert page.locator("#model-notice").is_hidden()


def _click_at(page, selector: str, x: float, y: float, natural: tuple[int, int]) -> None:
    """Click ``selector`` (an image shown at any scale) at pixel (x, y) of its natural size."""
    box = page.locator(selector).bounding_box()
    page.click(selector, position={"x": x * box["width"] / natural[0], "y": y * box["height"] / natural[1]})


def test_explore_click_shows_a_heatmap_peaking_at_the_true_location(explore_server, page):
    url, base = explore_server
    page.goto(url)
    page.click("#tab-explore")
    page.fill("#explore-size", "224")
    # The lab report's PCA 10 (the tab defaults to 0 like `vlens match`): at 224 px dino-tiny's raw tokens put the
    # nose's best match 79 px off (78 px with the previous weights), the 10-component projection within a patch.
    page.fill("#explore-pca", "10")
    page.set_input_files("#explore-a", str(base / "cat.png"))
    page.wait_for_function("window.vlensExplore.a !== null")
    page.set_input_files("#explore-b", str(base / "cat_shifted.png"))
    page.wait_for_function("window.vlensExplore.b !== null && "
                           "document.getElementById('explore-img-a').naturalWidth > 0")
    statuses = []
    for k, (x, y) in enumerate([(300, 120), (190, 240)]):  # the cat's eye, its nose
        _click_at(page, "#explore-img-a", x, y, (451, 300))
        page.wait_for_function(f"window.vlensExplore.lastPoint && window.vlensExplore.lastPoint.query_xy[0] > "
                               f"{x - 3} && window.vlensExplore.lastPoint.query_xy[0] < {x + 3}")
        d = page.evaluate("window.vlensExplore.lastPoint")
        px, py = d["peak_xy"]
        assert abs(px - (x - 40)) < 1.5 * 16 and abs(py - (y - 24)) < 1.5 * 16, (x, y, d["peak_xy"])
        assert d["cached"] is (k > 0)  # the second click reuses both images' features
        page.wait_for_function("document.getElementById('explore-img-b').src.startsWith('data:image/png')")
        best = page.locator("#marker-best")
        assert best.is_visible() and float(best.get_attribute("data-x")) == d["best"]["xy"][0]
        statuses.append(page.inner_text("#explore-status"))
        if k == 0:
            page.screenshot(path=str(ARTIFACTS / "web-explore.png"), full_page=True)
    assert "best match" in statuses[0] and "(features cached)" in statuses[1]
    # attention heads and PCA-RGB of the first image
    page.select_option("#explore-view", "attention")
    page.wait_for_selector("#explore-attention figure img")
    imgs = "[...document.querySelectorAll('#explore-attention img')]"
    page.wait_for_function(f"{imgs}.length === 6 && {imgs}.every(i => i.naturalWidth === 451)")
    assert "head 4" in page.inner_text("#explore-attention")
    page.screenshot(path=str(ARTIFACTS / "web-explore-attention.png"), full_page=True)


def test_why_these_words(explore_server, page):
    url, base = explore_server
    page.goto(url)
    page.click("#tab-caption")
    page.set_input_files("#caption-file", str(base / "cat.png"))
    page.select_option("#strategy", "sample")
    page.fill("#top-k", "5")
    page.fill("#seed", "0")
    page.click("#explain-btn")
    page.wait_for_selector("#explain-table tr")
    rows = page.locator("#explain-table tr")
    assert rows.count() >= 1
    assert rows.first.locator("td.chosen").count() == 1
    assert rows.first.locator("td.removed").count() >= 1  # top-k 5 of a bigger vocabulary removes some
    assert "effective choices" in page.inner_text("#explain-summary")
    page.screenshot(path=str(ARTIFACTS / "web-caption-explain.png"), full_page=True)
