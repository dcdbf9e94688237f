"""``vlens serve``: the web app (Search, Caption, Match) on a local port."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path

import typer

from vlens.cli._common import check


def register(root: typer.Typer) -> None:
    root.command("serve")(serve_cmd)


def serve_cmd(
    index: Path = typer.Option(None, "--index", help="Index folder for the Search tab (from `vlens index build`). "
                               "Without it, Search is off and the other tabs still work.",
                               callback=check.existing("dir")),
    captioner: str = typer.Option(None, "--captioner", help="Captioning model for the Caption tab (hub id, "
                                  "save_pretrained folder, checkpoint file or builtin:NAME). Default: "
                                  "Salesforce/blip-image-captioning-base when cached or downloadable, else "
                                  "builtin:blip-tiny (the page says so).", callback=check.text()),
    backbone: str = typer.Option(None, "--backbone", help="Backbone for the Match and Explore tabs. Default: "
                                 "facebook/dino-vits8 when cached or downloadable, else builtin:dino-tiny.",
                                 callback=check.text()),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind. The default is this machine only; "
                             "0.0.0.0 exposes the app (and your indexed images) to your network.",
                             callback=check.text()),
    port: int = typer.Option(8000, "--port", "-p", help="TCP port.", callback=check.integer(1, 65535)),
    max_upload_mb: float = typer.Option(10, "--max-upload-mb", help="Uploads above this size are refused (413).",
                                        callback=check.number(0, 1024, lo_open=True)),
    preload: bool = typer.Option(True, help="Load the search model at start (first query is then fast)."),
    threads: int = typer.Option(1, "--threads", help="Torch and FAISS threads per request. 1 (default) suits "
                                "small models and many concurrent users: requests run in parallel instead (as many "
                                "at once as the usable cores hold); raise it for a large model and few users.",
                                callback=check.count(1, 1024)),
    engine: str = typer.Option("auto", "--engine", help="Runtime for the search towers, the captioner's "
                               "vision encoder and the ViT token features of the Match and Explore tabs: torch, "
                               "onnx (ONNX Runtime exports, made once per model and input size, checked against "
                               "torch), or auto (default: whichever measured faster here for search and "
                               "caption; torch for Match and Explore, where each new upload size would wait for "
                               "its own export).",
                               callback=check.choice("torch", "onnx", "auto")),
):
    """Serve the web app: search an index by text or image, caption an image, match two images.

    The JSON API behind the page is documented at http://HOST:PORT/docs.
    """
    from vlens.errors import ConfigError

    try:
        import uvicorn

        from vlens.web.app import create_app
    except ImportError as exc:
        raise ConfigError(f"the web app needs the [web] extras ({exc.name} is missing): "
                          "pip install 'vlens[web]'") from None

    if not 0 < port < 65536:
        raise ConfigError(f"--port must be 1-65535 (got {port})")
    if max_upload_mb <= 0:
        raise ConfigError("--max-upload-mb must be positive")
    if threads < 1:
        raise ConfigError("--threads must be at least 1")
    sock = bind(host, port)  # before any model loads and before we say we are running
    from vlens import cpu

    plan = cpu.apply(threads, slots=0)  # as many concurrent requests as the cores hold at --threads each
    if plan.note():
        typer.echo(plan.note(), err=True)
    app = create_app(cpu_slots=plan.slots, index=index, captioner=captioner, backbone=backbone,
                     max_upload_bytes=int(max_upload_mb * 1024 * 1024), engine=engine)
    if preload:
        app.state.services.preload()
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: binding {host}: anyone who can reach this machine can see your indexed images",
                   err=True)
    typer.echo(f"vlens web app on http://{host}:{port}  (API docs: http://{host}:{port}/docs; Ctrl+C stops)")
    server = _Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                    timeout_graceful_shutdown=STOP_GRACE_S))
    server.run(sockets=[sock])
    if not server.stopped_by:
        return 0
    how = "Ctrl-C" if server.stopped_by == signal.SIGINT else signal.Signals(server.stopped_by).name
    typer.echo(f"vlens serve stopped ({how}); http://{host}:{port} no longer answers", err=True)
    code = 128 + server.stopped_by
    # Work abandoned in worker threads (a model forward) would hold the exit until it finishes, and the
    # interpreter's teardown of loaded models takes its own time: seconds. Nothing the server does needs finishing
    # (it writes no files), so the process ends now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


STOP_GRACE_S = 1
"""Ctrl-C waits this long for requests in flight, then drops them: the server stops within a second or two."""


def bind(host: str, port: int):
    """A TCP socket bound to (host, port) for uvicorn, or a ConfigError in one line that names the port and what
    to do (a busy port used to be reported by uvicorn, raw, after the server had said it was running)."""
    import errno
    import socket

    from vlens.errors import ConfigError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart reuses the port at once
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is already in use (another server is running there): stop it "
                              f"or pick another port with --port N, e.g. --port {port + 1 if port < 65535 else 8000}"
                              ) from None
        if exc.errno == errno.EACCES:
            raise ConfigError(f"not allowed to use port {port} on {host} (ports below 1024 need administrator "
                              "rights): pick another port with --port N, e.g. --port 8000") from None
        if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"cannot listen on {host}: not an address of this machine; use --host 127.0.0.1 "
                              "(this machine only) or --host 0.0.0.0 (every network)") from None
        raise ConfigError(f"cannot listen on {host} port {port}: {exc.strerror or exc}") from None
    return sock


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, stopped by Ctrl-C / SIGTERM without re-raising the signal afterwards (the command says
        it stopped, in its own words) and without uvicorn's log lines about the requests it drops."""

        stopped_by: int | None = None

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            old = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in old.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig, frame):
            import logging

            self.stopped_by = self.stopped_by or sig
            logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)  # "Cancel 1 running task(s)..."
            super().handle_exit(sig, frame)

    return Server


def _Server(config):  # noqa: N802 - builds the class on first use: uvicorn is imported only by `vlens serve`
    return _server_class()(config)
