"""`vlens serve` as a process: a busy port is refused in one line before the server says it runs, and Ctrl-C stops
it within a second or two, even with model work in flight, saying so in a server's words (issue 23, item 14)."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

SERVE = [sys.executable, "-m", "vlens.cli.main", "serve", "--backbone", "builtin:dino-tiny", "--captioner",
         "builtin:blip-tiny", "--no-preload"]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", VLENS_OFFLINE="1", OMP_NUM_THREADS="1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_busy_port_is_refused_in_one_line_before_announcing():
    """It used to print "vlens web app on http://..." and then uvicorn's raw
    "ERROR: [Errno 98] error while attempting to bind on address ... address already in use" (exit 3)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = subprocess.run([*SERVE, "--port", str(port)], env=ENV, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    assert p.stdout == ""  # nothing announced
    assert p.stderr == (f"error: port {port} on 127.0.0.1 is already in use (another server is running there): "
                        f"stop it or pick another port with --port N, e.g. --port {port + 1}\n")


def test_ctrl_c_during_startup_does_not_say_rerun_to_continue():
    from vlens.cli.main import interrupt_message

    assert interrupt_message(["serve", "--port", "8001"]) == "interrupted (Ctrl-C): vlens serve stopped"
    assert "rerun the same command" in interrupt_message(["index", "build", "photos"])


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (1024, 1024, 3)).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _start_serve():
    """`vlens serve` on a free port, returned once /api/health answers: (process, url)."""
    import httpx

    port = _free_port()
    proc = subprocess.Popen([*SERVE, "--port", str(port)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None or time.monotonic() >= deadline:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"the server did not start: {err[-2000:]}")
        try:
            if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)


@pytest.mark.slow
def test_ctrl_c_stops_the_server_promptly_with_work_in_flight():
    """Ctrl-C used to wait for every model forward in flight (8.3 s with three 1024 px matches here) and then say
    "rerun the same command to continue or start over"."""
    import httpx

    proc, url = _start_serve()
    done: list[float] = []
    try:
        images = [_png(0), _png(1)]

        def match():
            try:
                httpx.post(f"{url}/api/match", data={"count": "500"}, timeout=60,
                           files={"image_a": ("a.png", images[0], "image/png"),
                                  "image_b": ("b.png", images[1], "image/png")})
            except httpx.HTTPError:
                pass  # the server dropped it: expected
            done.append(time.monotonic())

        workers = [threading.Thread(target=match, daemon=True) for _ in range(3)]
        for w in workers:
            w.start()
        time.sleep(1.5)  # the uploads are in, the first forwards (and the model load) are running
        assert not done, "the requests finished before Ctrl-C: the test needs work in flight"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert took < 4.0, (took, err)
    assert proc.returncode == 130
    assert err.strip().splitlines() == [f"vlens serve stopped (Ctrl-C); {url} no longer answers"], err
    assert "rerun" not in err and f"vlens web app on {url}" in out


@pytest.mark.slow
def test_ctrl_c_stops_an_idle_server_at_once():
    """Issue 29 item 7: an idle server (a page loaded, a browser's connection kept alive) took 7.8 s to stop in the
    hostile trial; the process now ends as soon as uvicorn has closed its connections (0.84 s measured here before
    this change, with no models loaded)."""
    import httpx

    proc, url = _start_serve()
    try:
        with httpx.Client(timeout=5) as browser:
            assert browser.get(f"{url}/").status_code == 200 and browser.get(f"{url}/api/info").status_code == 200
            time.sleep(0.5)  # idle, the connection kept alive
            t0 = time.monotonic()
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
            took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert took < 6, (took, err)  # 7.8 s in the hostile trial; generous so a loaded machine cannot fail it
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == f"vlens serve stopped (Ctrl-C); {url} no longer answers"
