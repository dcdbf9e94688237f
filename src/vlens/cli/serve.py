"""``vlens serve``: the web app (Search, Caption, Match) on a local port."""

from __future__ import annotations

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
    from vlens import cpu

    plan = cpu.apply(threads, slots=0)  # as many concurrent requests as the cores hold at --threads each
    app = create_app(cpu_slots=plan.slots, index=index, captioner=captioner, backbone=backbone,
                     max_upload_bytes=int(max_upload_mb * 1024 * 1024))
    if preload:
        app.state.services.preload()
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: binding {host}: anyone who can reach this machine can see your indexed images",
                   err=True)
    typer.echo(f"vlens web app on http://{host}:{port}  (API docs: http://{host}:{port}/docs; Ctrl+C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
