"""Heavy tensor work that still answers Ctrl-C within a fraction of a second.

Python runs a signal handler only in the main thread, between bytecodes: while one torch operation runs for a
minute (a ViT forward on 260k tokens), Ctrl-C waits for it. :func:`interruptible` runs the work in a worker thread
(torch releases the GIL) and waits for it in short slices, so the CLI's SIGINT handler runs at once; the
abandoned worker is a daemon thread and ends with the process. Outside the main thread (the web server's
workers) it simply calls the function.
"""

from __future__ import annotations

import threading

WAIT_SLICE_S = 0.1


def interruptible(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, run so that Ctrl-C in the main thread interrupts the wait for it."""
    if threading.current_thread() is not threading.main_thread():
        return fn(*args, **kwargs)
    box: dict = {}

    def work():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=work, name="vlens-work", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(WAIT_SLICE_S)
    if "error" in box:
        raise box["error"]
    return box.get("value")
