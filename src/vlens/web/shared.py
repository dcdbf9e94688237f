"""Request helpers shared by the web app's routes (:mod:`vlens.web.app`) and the Explore routes
(:mod:`vlens.web.explore`): reading an upload into a bounded image, the Caption tab's decoding form, and running
CPU work off the event loop within a fixed number of slots."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Form, HTTPException, UploadFile
from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from vlens.errors import ImageLoadError

UPLOAD_MAX_PIXELS = 40_000_000
WORK_MAX_SIDE = 1024
"""Uploaded images are shrunk to this longer side before any model sees them (the models work at 224-448 px):
the work per request does not grow with the upload."""
MAX_ASPECT = 16.0
"""Uploads more elongated than this (longer side / shorter side) are refused with 422."""
REQUEST_TIMEOUT_S = 120.0
"""CPU work of one request that takes longer than this is abandoned with 503 (the server stays responsive)."""
CPU_SLOTS = 2
"""Requests doing model work at the same time; others wait their turn, while light requests (info, thumbnails,
health) keep their own threads."""


_cpu_limiter = None


def _not_zero(layer: int) -> int:
    if layer == 0:
        raise PydanticCustomError("layer_zero", "0 does not exist: layers are counted from 1 (-1 = the last), "
                                                "as on the command line")
    return layer


Layer = Annotated[int, Field(ge=-256, le=256, description="Transformer block counted from 1; -1 = the last "
                                                           "(-2 the one before); 0 does not exist. The same numbering "
                                                           "as the CLI's --layer."),
                  AfterValidator(_not_zero)]
"""The layer field of every route: whether the model has that many blocks is checked against the model itself
(:func:`vlens.match.features.block_index`), with the same message as the CLI."""


def Coordinate(side: int, description: str):  # noqa: N802 - used like a type in the request models
    """A pixel coordinate in [0, side]: a finite number (NaN and infinity are refused as such, not as too large)."""
    return Field(..., ge=0, le=side, allow_inf_nan=False, description=description)


def shown_filename(upload: UploadFile) -> str:
    """The upload's own file name as messages show it: control characters escaped, a long name shortened (one
    line); "" when the client sent none."""
    fn = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in (upload.filename or ""))
    return fn[:38] + "..." + fn[-38:] if len(fn) > 80 else fn


def upload_label(upload: UploadFile, name: str) -> str:
    """How messages name an upload: the form field and the file's own name, e.g. ``image_a (holiday.jpg)``."""
    fn = shown_filename(upload)
    return f"{name} ({fn})" if fn and fn != name else name


def set_cpu_slots(n: int) -> None:
    """Let ``n`` requests compute at once from now on (``create_app(cpu_slots=...)``)."""
    global CPU_SLOTS, _cpu_limiter
    CPU_SLOTS, _cpu_limiter = int(n), None


async def run_cpu(fn, *args):
    """Run CPU-heavy ``fn(*args)`` in a worker thread (never on the event loop), at most ``CPU_SLOTS`` at once,
    abandoned with 503 after ``REQUEST_TIMEOUT_S``."""
    import anyio

    global _cpu_limiter
    if _cpu_limiter is None:
        _cpu_limiter = anyio.CapacityLimiter(CPU_SLOTS)
    try:
        with anyio.fail_after(REQUEST_TIMEOUT_S):
            return await anyio.to_thread.run_sync(fn, *args, limiter=_cpu_limiter, abandon_on_cancel=True)
    except TimeoutError:
        raise HTTPException(503, f"the work took longer than {REQUEST_TIMEOUT_S:.0f} s; try a smaller image or "
                                 "fewer results") from None


def bounded(img, name: str, max_side: int = WORK_MAX_SIDE):
    """``img`` shrunk to ``max_side`` (aspect kept), or 422 if it is too elongated to be worth the work."""
    w, h = img.size
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise HTTPException(422, f"{name}: {w}x{h} pixels is too elongated (more than {MAX_ASPECT:g}:1); crop it")
    if max(w, h) > max_side:
        s = max_side / max(w, h)
        img = img.resize((max(1, round(w * s)), max(1, round(h * s))))
    return img


def caption_prompt(prompt: str, no_prompt: bool) -> str | None:
    """The prompt a caption form asks for: None = the model's training prompt (an empty field), "" = none at all
    (the "no prompt" box), else the text; both at once is a 422 that says which to drop."""
    if no_prompt and prompt.strip():
        raise HTTPException(422, "prompt: give a prompt or tick 'no prompt', not both")
    return "" if no_prompt else (prompt.strip() or None)


def decoding_form(strategy: Literal["greedy", "beam", "sample"] = Form("greedy"),
                  top_k: int = Form(50, ge=1, le=10000, description="sample: draw from the k likeliest tokens"),
                  top_p: float = Form(1.0, gt=0, le=1, description="sample: nucleus mass (1 = off)"),
                  temperature: float = Form(1.0, ge=0, le=5, description="sample: <1 safer, >1 more varied"),
                  prompt: str = Form("", max_length=200, description="text the caption must continue "
                                     "(empty: the model's training prompt)"),
                  no_prompt: bool = Form(False, description="caption with no prompt at all"),
                  num_beams: int = Form(3, ge=1, le=10),
                  seed: int | None = Form(None, ge=0, le=2**32 - 1)) -> dict:
    """The Caption tab's decoding fields, shared by /api/caption and /api/caption/explain (a FastAPI
    dependency): keyword arguments of :class:`vlens.caption.DecodeSettings`."""
    return {"strategy": strategy, "top_k": top_k, "top_p": top_p, "temperature": temperature,
            "prompt": caption_prompt(prompt, no_prompt), "num_beams": num_beams, "seed": seed}


async def read_image(upload: UploadFile, limit: int, name: str = "file"):
    """The uploaded file as an RGB PIL image (decoded off the event loop) and :func:`bounded` (every route's work
    stays bounded), or an HTTP error that says what is wrong."""
    from vlens.images import load_image

    filename, name = shown_filename(upload), upload_label(upload, name)
    ctype = (upload.content_type or "").lower()
    if ctype and not (ctype.startswith("image/") or ctype == "application/octet-stream"):
        raise HTTPException(415, f"{name}: '{ctype}' is not an image; upload a JPEG, PNG, WebP, HEIC, AVIF, "
                                 "GIF, BMP, TIFF, JPEG XL or camera RAW file")
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"{name}: larger than the {limit // (1024 * 1024) or 1} MB upload limit")
    if not data:
        raise HTTPException(422, f"{name}: the file is empty")
    try:
        return await run_cpu(lambda: bounded(load_image(data, name=filename or name,
                                                        max_pixels=UPLOAD_MAX_PIXELS), name))
    except ImageLoadError as exc:
        status = 415 if "not a recognised image format" in exc.reason or "install vlens[" in exc.reason else 422
        raise HTTPException(status, f"{name}: {exc.reason}") from None
