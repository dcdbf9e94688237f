"""Regenerate the README's pictures of the web app's Caption and Match tabs with the shipped models.

    python scripts/web_screenshots.py   # docs/web-caption.png, docs/web-caption-explain.png, docs/web-match.png

Serves `vlens serve`'s app (builtin:blip-tiny, and the offline default backbone of the Match tab) on a free local
port and opens it in Debian's Chromium through Playwright. Caption: the lab's shapes test image 1, sampled with
top-k 5, seed 0: three captions at temperature 0.8, then the why-these-words table at 1.0. Match: scikit-image's
`chelsea` against a 2x-zoomed crop of its face, the 25 best matches by cycle distance, the tab's defaults otherwise
(quadratic refinement). The browser tests take the same screenshots of tiny random models (test-artifacts/);
these show what a user sees.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
        "--disable-dev-shm-usage"]


def serve(app):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=srv.run, daemon=True).start()
    deadline = time.time() + 120
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    if not srv.started:
        raise SystemExit("error: the server did not start")
    return srv, f"http://127.0.0.1:{port}"


def main() -> None:
    from playwright.sync_api import sync_playwright

    from vlens.data.photos import photo_paths
    from vlens.data.shapes import make_scene
    from vlens.images import load_image
    from vlens.models.defaults import MATCH_FALLBACK
    from vlens.web.app import create_app

    work = ROOT / "runs" / "web-screenshots"
    work.mkdir(parents=True, exist_ok=True)
    image = work / "shapes_test_00001.png"  # scenes depend only on seed/split/index
    make_scene(0, "target", "test", 1)[0].save(image)
    cat = load_image(photo_paths(("chelsea",))[0])  # 451 x 300
    cat.save(work / "chelsea.png")
    cat.crop((120, 40, 320, 240)).resize((400, 400)).save(work / "chelsea_face_2x.png")
    srv, url = serve(create_app(captioner="builtin:blip-tiny", backbone=MATCH_FALLBACK))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(url)
            page.click("#tab-caption")
            page.set_input_files("#caption-file", str(image))
            page.select_option("#strategy", "sample")
            page.fill("#top-k", "5")
            page.fill("#seed", "0")
            page.fill("#n", "3")
            page.fill("#temperature", "0.8")
            page.click("#caption-btn")
            page.wait_for_function("document.querySelectorAll('#captions li.caption').length === 3")
            shot(page, "web-caption.png")
            page.fill("#n", "1")
            page.fill("#temperature", "1.0")
            page.click("#explain-btn")
            page.wait_for_selector("#explain-table tr")
            shot(page, "web-caption-explain.png")
            page.click("#tab-match")
            page.set_input_files("#match-a", str(work / "chelsea.png"))
            page.set_input_files("#match-b", str(work / "chelsea_face_2x.png"))
            page.fill("#count", "25")
            page.click("#match-btn")
            page.wait_for_function("document.getElementById('match-result').naturalWidth > 0 && "
                                   "!document.getElementById('match-btn').disabled")
            shot(page, "web-match.png")
            print(page.inner_text("#match-status"))
            browser.close()
    finally:
        srv.should_exit = True


def shot(page, name: str) -> None:
    out = ROOT / "docs" / name
    page.screenshot(path=str(out), full_page=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
