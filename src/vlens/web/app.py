"""The vlens web app: one page (Search, Caption, Match, Explore) over a small JSON API. OpenAPI docs at ``/docs``.

``create_app(index=..., captioner=..., backbone=...)`` returns a FastAPI app; ``vlens serve`` runs it with
uvicorn on 127.0.0.1. Models load on first use (or at start with ``preload()``). Images are served by index id
only, never by a path from the request; uploads are size-limited (413) and must decode as images (415/422);
malformed requests get a 4xx with a message, never a 5xx.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from pathlib import Path
from typing import Literal

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as FastPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from vlens.errors import ConfigError, ImageLoadError, IndexError_, ModelLoadError, VlensError
from vlens.web.shared import decoding_form, read_image, run_cpu, set_cpu_slots

STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD = 10 * 1024 * 1024


# ----------------------------------------------------------------------------------------------- schemas


class Filters(BaseModel):
    """Search and browse filters (``vlens search --help`` says what each means); empty = no restriction."""

    after: str | None = Field(None, max_length=40, description="Taken on or after: YYYY-MM-DD, YYYY or ISO time.")
    before: str | None = Field(None, max_length=40, description="Taken on or before (a date: its whole day).")
    camera: str | None = Field(None, max_length=200, description="Camera make or model contains this.")
    folder: str | None = Field(None, max_length=1000, description="Folder glob (a parent matching counts).")
    near: str | None = Field(None, max_length=100, description="LAT,LON,KM.")
    format: str | None = Field(None, max_length=200, description="Formats, comma-separated: jpg,heic.")

    def parsed(self):
        from vlens.retrieval.filters import Filters as F

        return F.from_text(after=self.after or None, before=self.before or None, camera=self.camera or None,
                           folder=self.folder or None, near=self.near or None, formats=self.format or None)


class SearchRequest(Filters):
    query: str = Field(..., min_length=1, max_length=1000, description="What to look for: words, or a combined "
                       "query in rclip's form, terms joined by + and -, each optionally weighted N:, and id:N for "
                       "an indexed image, e.g. '2:a red circle - id:5 + blue'.",
                       examples=["a red circle on the left", "2:a red circle - a blue square"])
    k: int = Field(12, ge=1, le=200, description="How many results.")


class LibraryItem(BaseModel):
    id: int
    path: str
    url: str
    thumb_url: str


class LibraryPage(BaseModel):
    total: int = Field(description="Images in the index.")
    passed: int = Field(description="Images that pass the filters.")
    offset: int
    items: list[LibraryItem]
    skipped: int = Field(description="Files the index left out (unsupported kinds and unreadable files).")
    skipped_by_kind: dict[str, int] = Field(description="Those files counted by kind, as `vlens index info` "
                                            "counts them: {'.mov': 37, 'unreadable': 2}.")


class DupeImage(BaseModel):
    id: int
    path: str
    size: int
    similarity: float
    bits: int | None
    thumb_url: str


class DupeGroupOut(BaseModel):
    kind: str
    images: list[DupeImage]


class DupesResponse(BaseModel):
    threshold: float
    max_bits: int
    groups: list[DupeGroupOut]


class Hit(BaseModel):
    id: int = Field(description="Index id; the image is at `url`.")
    path: str = Field(description="Path relative to the indexed folder.")
    score: float = Field(description="Cosine similarity to the query, in [-1, 1].")
    caption: str | None = None
    url: str
    thumb_url: str


class SearchResponse(BaseModel):
    query: str | None
    k: int
    took_ms: float
    hits: list[Hit]


class CaptionItem(BaseModel):
    text: str
    logprob: float
    mean_logprob: float
    ended: bool  # False: cut at the token limit before the model ended it


class CaptionResponse(BaseModel):
    captions: list[CaptionItem]
    settings: dict
    notes: list[str]
    model: str
    took_ms: float


class MatchItem(BaseModel):
    src_xy: list[float]
    dst_xy: list[float]
    feature_distance: float
    cycle_distance: float
    mutual: bool = Field(description="Mutual nearest neighbours (A->B->A comes back to the same patch); ranked "
                                     "first by cycle score")
    cluster: int | None = Field(None, description="With pairs > 0: the k-means cluster of this best-buddy pair "
                                                  "(one pair per cluster)")


class MatchResponse(BaseModel):
    image: str = Field(description="The two images side by side with the matches drawn (PNG data URL).")
    matches: list[MatchItem]
    score: str
    refine: str = Field(description="The sub-patch refinement used: quadratic, soft or none (patch centres).")
    stride: int | None = Field(None, description="The patch stride asked for (None: the patch size, no overlap).")
    pairs: int = Field(0, description="Well-spread best-buddy pairs asked for (0: the top matches were drawn).")
    preset: str | None = Field(None, description="The recipe used (dvf) or None.")
    ranked_by: str | None = Field(None, description="With pairs: how each cluster's pair was chosen, saliency or "
                                                    "cycle.")
    bin_levels: int | None = Field(0, description="Log-binning levels of the descriptors (0 = off; 2 = the default; "
                                                  "None: the recipe's, with preset).")
    model: str
    took_ms: float


class ErrorBody(BaseModel):
    """The body of every error response (4xx, and 503 when a model or the index is unavailable)."""

    detail: str = Field(description="What went wrong and what to do, in one sentence.")
    errors: list[dict] | None = Field(None, description="422 on malformed input: one entry per invalid field "
                                      "(loc, msg, type).")


ERROR_RESPONSES = {
    400: {"model": ErrorBody, "description": "Bad request."},
    404: {"model": ErrorBody, "description": "No such image, or the search index is missing."},
    409: {"model": ErrorBody, "description": "The index is busy or was built differently."},
    410: {"model": ErrorBody, "description": "The indexed file can no longer be read."},
    413: {"model": ErrorBody, "description": "Upload larger than the server's limit."},
    415: {"model": ErrorBody, "description": "Upload is not an image."},
    422: {"model": ErrorBody, "description": "Invalid field, unreadable or unusable image (e.g. too elongated)."},
    503: {"model": ErrorBody, "description": "A model or the index is unavailable, or the work took too long."},
}
"""Documented for every route (new routes inherit it from the app): the OpenAPI schema says what the bodies are."""


class Info(BaseModel):
    version: str
    index: dict | None
    features: dict[str, dict]
    models: dict[str, dict] = {}
    max_upload_bytes: int


# ----------------------------------------------------------------------------------------------- limits


class UploadTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413, by header or by counting."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        if declared > self.limit:
            return await self._reject(send)
        seen, started, over = 0, False, False

        async def counted():
            nonlocal seen, over
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise UploadTooLarge
            return msg

        async def tracked(msg):
            # The app may catch our exception and answer (FastAPI says 400 "error parsing the body"):
            # whatever it says once the limit was crossed is replaced by the 413.
            nonlocal started
            if over:
                if msg["type"] == "http.response.start" and not started:
                    started = True
                    await self._reject(send)
                return
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counted, tracked)
        except UploadTooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send):
        body = (b'{"detail":"upload too large: the limit is %d MB; resize or compress the image"}'
                % (self.limit // (1024 * 1024) or 1))
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})


# ----------------------------------------------------------------------------------------------- state


class Services:
    """What the routes call: the searcher, captioner and matcher, each loaded on first use."""

    def __init__(self, index=None, captioner: str | None = None, backbone: str | None = None,
                 engine: str = "torch"):
        from vlens.engines import check_engine
        from vlens.models import default_spec

        self.engine = check_engine(engine)  # search's towers and the captioner's vision encoder
        # The Match and Explore tabs' ViT tokens: every new upload size needs its own export (10+ s), which one
        # interactive request never repays, so auto means torch there, as `vlens match` defaults to torch.
        self.token_engine = "torch" if self.engine == "auto" else self.engine
        self.index_path = index
        # No spec: the task's default, the real model when cached or downloadable, else the builtin (the models
        # resolver decides once; the page shows a notice for a builtin, see models()).
        self.captioner_spec = captioner or default_spec("captioner")
        self.backbone_spec = backbone or default_spec("backbone")
        self._searcher = None
        self._skipped = None  # (index generation, skipped files)
        self._lock = threading.Lock()
        self._match_lock = threading.Lock()
        if index is not None:
            from vlens.retrieval.search import Searcher

            self._searcher = Searcher(index, engine=self.engine)

    @property
    def searcher(self):
        if self._searcher is None:
            raise HTTPException(503, "search is off: no index was given; start the server with "
                                     "`vlens serve --index INDEX` (make one with `vlens index build`)")
        return self._searcher

    def captioner(self):
        try:
            from vlens.caption import Captioner
        except ImportError:
            raise HTTPException(503, "captioning is not available in this vlens install") from None
        try:
            return Captioner.from_spec(self.captioner_spec, device="cpu", engine=self.engine)
        except ModelLoadError as exc:
            raise HTTPException(503, f"captioner unavailable: {exc}") from None

    def matcher(self):
        try:
            from vlens.match import draw_matches, match_images
        except ImportError:
            raise HTTPException(503, "matching is not available in this vlens install (vlens.match has no "
                                     "match_images yet)") from None
        return match_images, draw_matches

    def features(self) -> dict[str, dict]:
        out = {"search": {"available": self._searcher is not None,
                          "detail": "ready" if self._searcher else "no index: start with --index INDEX"}}
        try:
            import vlens.caption  # noqa: F401

            out["caption"] = _model_state(self.captioner_spec)
        except ImportError:
            out["caption"] = {"available": False, "detail": "vlens.caption is not installed"}
        try:
            from vlens.match import draw_matches, match_images  # noqa: F401

            out["match"] = _model_state(self.backbone_spec)
            out["explore"] = out["match"]
        except ImportError:
            out["match"] = {"available": False, "detail": "matching is not available in this vlens install"}
        return out

    def models(self) -> dict[str, dict]:
        """Each tab's model, where it came from (builtin | cache | hub | local | ...) and, for a builtin, what it
        knows and the command that gets the real one."""
        from vlens.models.defaults import TASKS, knows
        from vlens.models.hub import source_of

        tabs = [("caption", self.captioner_spec, "caption"), ("match", self.backbone_spec, "match")]
        if self._searcher is not None:
            tabs.append(("search", self._searcher.index.info().get("model"), "retrieval"))
        out = {}
        for tab, spec, task in tabs:
            d, source = TASKS[task], source_of(spec)
            out[tab] = {"spec": spec, "source": source, "builtin": source == "builtin", "knows": knows(spec),
                        "real": d.real, "fetch": d.fetch_command}
        return out

    def skipped(self, info: dict) -> list[dict]:
        """The index's skipped files as `vlens index info` lists them (stored + refused by the folder scan),
        scanned once per index generation (the page asks for /api/info on every load)."""
        from vlens.retrieval.index import all_skipped

        key = info.get("generation")
        if self._skipped is None or self._skipped[0] != key:
            self._skipped = (key, all_skipped(info))
        return self._skipped[1]

    def preload(self) -> None:
        """Load the models now so that the first request is fast."""
        if self._searcher is not None:
            self._searcher.encoder  # noqa: B018 - loads it


def _model_state(spec: str) -> dict:
    """Whether a model spec resolves, checked without loading it (hub ids are assumed fine: no network here). A
    fusion (``builtin:dino-tiny*0.2+sift:8*0.8``, the offline Match default) is checked part by part; ``pixels``
    and ``sift`` need no weights."""
    from vlens.models.hub import resolve

    parts = [spec]
    try:
        from vlens.match.features import fused_parts

        parts = [name for name, _w in fused_parts(spec) or [(spec, 1.0)]]
    except ImportError:
        pass
    except ConfigError as exc:
        return {"available": False, "detail": str(exc)}
    for part in parts:
        if part.split(":")[0] in ("pixels", "sift"):
            continue
        part = part.split(":", 1)[1] if part.startswith("random:") else part
        if part.startswith("builtin:") or Path(part).expanduser().exists():
            try:
                resolve(part)
            except ModelLoadError as exc:
                return {"available": False, "detail": str(exc)}
        else:  # a hub id: no network here, but a damaged copy in the cache is known now
            from vlens.models.hub import cached, damage, damaged_message

            snap = cached(part)
            found = damage(snap) if snap is not None else None
            if found:
                return {"available": False, "detail": damaged_message(part, found)}
    return {"available": True, "detail": f"model {spec}"}


def _hits(hits) -> list[Hit]:
    return [Hit(id=h.id, path=h.path, score=round(h.score, 5), caption=h.caption, url=f"/api/images/{h.id}",
                thumb_url=f"/api/images/{h.id}?size=256") for h in hits]


# ----------------------------------------------------------------------------------------------- the app


def create_app(index=None, captioner: str | None = None, backbone: str | None = None,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD, cpu_slots: int | None = None,
               engine: str = "torch") -> FastAPI:
    """The web app. ``index``: an index folder (Search tab); ``captioner`` / ``backbone``: model specs;
    ``cpu_slots``: requests computing at once (``vlens serve`` sizes it from the CPU policy); ``engine``: torch,
    onnx or auto for the search towers, the captioner's vision encoder and the token features of the Match and
    Explore tabs (:mod:`vlens.engines`)."""
    from vlens import __version__

    if cpu_slots:
        set_cpu_slots(cpu_slots)

    svc = Services(index, captioner, backbone, engine)
    app = FastAPI(title="vlens", version=__version__, responses=ERROR_RESPONSES,
                  description="Search an image index with words or a picture, caption an image, match two "
                              "images. Images are addressed by index id. Uploads: multipart/form-data, "
                              f"at most {max_upload_bytes // (1024 * 1024) or 1} MB.")
    app.state.services = svc
    app.add_middleware(BodyLimit, limit=max_upload_bytes)

    @app.exception_handler(VlensError)
    async def _vlens_error(request: Request, exc: VlensError):
        status = {ConfigError: 422, ImageLoadError: 422, IndexError_: 409, ModelLoadError: 503}.get(type(exc), 400)
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        msgs = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
            msgs.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        errors = [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg")), "type": str(e.get("type"))}
                  for e in exc.errors()]  # the raw input may be bytes: not echoed back
        return JSONResponse({"detail": "; ".join(msgs) or "invalid request", "errors": errors}, status_code=422)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/health", tags=["meta"])
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/api/info", response_model=Info, tags=["meta"])
    def info() -> Info:
        """What this server offers: the index (size, model, kind, recall), which tabs work, and each tab's model
        with its source (``builtin``: an embedded model that knows only what ``knows`` says)."""
        ix = None
        if svc._searcher is not None:
            full = svc._searcher.index.info()
            full["skipped"] = svc.skipped(full)
            ix = {k: full[k] for k in ("count", "model", "dim", "kind", "metric", "updated", "stale")}
            ix["recall_at_10"] = full["ann"].get("recall_at_10")
            ix["name"] = Path(full["index"]).name
            ix["skipped"] = len(full["skipped"])  # unreadable files, listed by name (first 20)
            ix["skipped_files"] = full["skipped"][:20]
        return Info(version=__version__, index=ix, features=svc.features(), models=svc.models(),
                    max_upload_bytes=max_upload_bytes)

    def _web_terms(query: str | None, required: bool = False):
        from vlens.retrieval.query import parse_query

        if not required and (not query or not query.strip()):
            return []
        terms = parse_query(query)
        if any(t.kind == "image" for t in terms):
            raise ConfigError("the web app cannot read files on the server by path; upload the image, or use "
                              "id:N for an indexed one (the N in its enlarged view)")
        return terms

    def _combined(searcher, terms, images, k: int, filters):
        return searcher.vectors(searcher.query_vector(terms, images)[None], k, filters)[0]

    @app.post("/api/search", response_model=SearchResponse, tags=["search"])
    def search_text(req: SearchRequest) -> SearchResponse:
        """Images most similar to a query, best first, with cosine similarity: words, or a combined query
        (``2:a red circle - a blue square + id:5``), among the images that pass the filters."""
        t0 = time.perf_counter()
        searcher, filters, terms = svc.searcher, req.parsed(), _web_terms(req.query, required=True)
        hits = _combined(searcher, terms, (), req.k, filters)
        return SearchResponse(query=req.query, k=req.k, took_ms=round((time.perf_counter() - t0) * 1000, 2),
                              hits=_hits(hits))

    @app.post("/api/search/image", response_model=SearchResponse, tags=["search"])
    async def search_image(file: UploadFile = File(..., description="The query image."),
                           k: int = Form(12, ge=1, le=200),
                           query: str | None = Form(None, max_length=1000, description="More terms to combine "
                                                    "with the image (+ and -, N: weights, id:N)."),
                           after: str | None = Form(None, max_length=40),
                           before: str | None = Form(None, max_length=40),
                           camera: str | None = Form(None, max_length=200),
                           folder: str | None = Form(None, max_length=1000),
                           near: str | None = Form(None, max_length=100),
                           format: str | None = Form(None, max_length=200)) -> SearchResponse:  # noqa: A002
        """Images most similar to an uploaded image (plus the query's terms, if any), among those that pass the
        filters."""
        searcher = svc.searcher
        filters = Filters(after=after, before=before, camera=camera, folder=folder, near=near,
                          format=format).parsed()
        terms = _web_terms(query)
        img = await read_image(file, max_upload_bytes)
        t0 = time.perf_counter()
        hits = await run_cpu(_combined, searcher, terms, [img], k, filters)
        return SearchResponse(query=query or None, k=k, took_ms=round((time.perf_counter() - t0) * 1000, 2),
                              hits=_hits(hits))

    @app.post("/api/library", response_model=LibraryPage, tags=["search"])
    def library(req: Filters, offset: int = Query(0, ge=0, le=2**40),
                limit: int = Query(60, ge=1, le=500)) -> LibraryPage:
        """The indexed images that pass the filters, by path, a page at a time (what the Search tab shows before
        any query), with how many files the index passed over."""
        from vlens.retrieval.filters import matching_ids

        ix = svc.searcher.index
        f = req.parsed()
        ix.refresh()
        with ix.lock:
            total = int(ix.con.execute("SELECT COUNT(*) FROM images").fetchone()[0])
            if f.active:
                ids = [int(i) for i in matching_ids(ix.con, f)]
                passed = len(ids)
                rows = {}
                for i in range(0, len(ids), 900):
                    part = ids[i:i + 900]
                    rows.update(ix.con.execute(f"SELECT id, path FROM images WHERE id IN ({','.join('?' * len(part))})",
                                               part).fetchall())
                page = sorted(rows.items(), key=lambda r: r[1])[offset:offset + limit]
            else:
                passed = total
                page = ix.con.execute("SELECT id, path FROM images ORDER BY path LIMIT ? OFFSET ?",
                                      (limit, offset)).fetchall()
        info = ix.info()
        unreadable = len(svc.skipped(info))
        kinds = {**(info.get("passed_over") or {}), **({"unreadable": unreadable} if unreadable else {})}
        items = [LibraryItem(id=i, path=p, url=f"/api/images/{i}", thumb_url=f"/api/images/{i}?size=256")
                 for i, p in page]
        return LibraryPage(total=total, passed=passed, offset=offset, skipped=sum(kinds.values()),
                           skipped_by_kind=kinds, items=items)

    dupes_cache: dict = {}

    @app.get("/api/dupes", response_model=DupesResponse, tags=["search"])
    async def dupes(threshold: float = Query(0.95, ge=-1, le=1, description="Smallest embedding cosine."),
                    max_bits: int = Query(10, ge=0, le=64, description="Most perceptual-hash bits that differ.")
                    ) -> DupesResponse:
        """Groups of duplicate images: exact copies and near copies (as ``vlens index dupes``), largest file
        first."""
        from vlens.retrieval.dupes import find_duplicates

        ix = svc.searcher.index
        ix.refresh()
        key = (ix.generation, threshold, max_bits)
        if key not in dupes_cache:
            dupes_cache.clear()
            dupes_cache[key] = await run_cpu(lambda: find_duplicates(ix, threshold=threshold, max_bits=max_bits))
        groups = dupes_cache[key]
        return DupesResponse(threshold=threshold, max_bits=max_bits, groups=[DupeGroupOut(kind=g.kind, images=[
            DupeImage(id=i, path=p, size=z, similarity=c, bits=b, thumb_url=f"/api/images/{i}?size=256")
            for i, p, z, c, b in zip(g.ids, g.paths, g.sizes, g.similarity, g.bits)]) for g in groups])

    @app.get("/api/images/{image_id}", tags=["search"],
             responses={200: {"content": {"image/*": {}}}, 404: {"description": "No image with this id."}})
    def image(image_id: int = FastPath(..., ge=1, le=2**62, description="Index id from a search hit."),
              size: int | None = Query(None, ge=16, le=2048,
                                                      description="Longest side of a thumbnail (JPEG).")):
        """An indexed image by id (the original file, or a thumbnail with ``size``)."""
        path = svc.searcher.index.file(image_id)
        if path is None:
            raise HTTPException(404, f"no image with id {image_id} in this index")
        if size is None:
            return FileResponse(path, headers={"Cache-Control": "max-age=3600"})
        from PIL import ImageOps

        from vlens.images import load_image

        try:
            img = load_image(path)
            s = size / max(img.size)
            img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s)))) if s < 1 else \
                ImageOps.contain(img, (size, size))
        except ImageLoadError as exc:
            raise HTTPException(410, f"the file for id {image_id} can no longer be read: {exc.reason}") from None
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        return Response(buf.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.post("/api/caption", response_model=CaptionResponse, tags=["caption"])
    async def caption(file: UploadFile = File(..., description="The image to caption."),
                      decoding: dict = Depends(decoding_form),
                      n: int = Form(1, ge=1, le=10, description="captions to return")) -> CaptionResponse:
        """Caption an uploaded image with the chosen decoding strategy."""
        from vlens.caption import DecodeSettings

        img = await read_image(file, max_upload_bytes)
        settings = DecodeSettings(**{**decoding, "n": n, "num_beams": max(decoding["num_beams"], n)})
        settings, notes = settings.validated()
        cap = svc.captioner()
        settings = settings.replace(prompt=cap.resolve_prompt(settings.prompt))  # report the prompt used
        t0 = time.perf_counter()
        caps = (await run_cpu(cap.caption, [img], settings))[0]
        return CaptionResponse(
            captions=[CaptionItem(text=c.text, logprob=round(c.logprob, 4), mean_logprob=round(c.mean_logprob, 4),
                                  ended=c.ended) for c in caps],
            settings={"strategy": settings.strategy, "top_k": settings.top_k, "top_p": settings.top_p,
                      "temperature": settings.temperature,
                      "prompt": settings.prompt, "n": settings.n, "num_beams": settings.num_beams},
            notes=notes, model=cap.spec, took_ms=round((time.perf_counter() - t0) * 1000, 2))

    @app.post("/api/match", response_model=MatchResponse, tags=["match"])
    async def match(image_a: UploadFile = File(..., description="Source image."),
                    image_b: UploadFile = File(..., description="Destination image."),
                    score: Literal["cycle", "feature"] = Form("cycle", description="How matches are ranked: "
                                                              "cycle (negative cycle distance) or feature"),
                    count: int = Form(30, ge=1, le=500, description="How many top matches to draw"),
                    refine: Literal["none", "soft", "quadratic"] | None = Form(
                        None, description="Sub-patch refinement of each match: quadratic (the default, as `vlens "
                        "match`), soft, or none (patch centres)"),
                    stride: int | None = Form(None, ge=1, le=64, description="Overlapping patches: a descriptor "
                                              "every S input pixels (S divides the patch size); empty = the patch "
                                              "size"),
                    pairs: int = Form(0, ge=0, le=100, description="Draw this many well-spread best-buddy pairs "
                                      "(k-means over mutual nearest neighbours, one colour each) instead of the top "
                                      "matches; 0 = top matches"),
                    preset: Literal["dvf"] | None = Form(None, description="'dvf': the Deep ViT Features recipe "
                                                         "(key facet, layer 9 of 12 scaled, stride 4, binning, "
                                                         "saliency 0.05, 10 pairs unless pairs is given); a stride "
                                                         "given here wins"),
                    bin_levels: int | None = Form(None, ge=0, le=5, description="Log-binned descriptors: levels "
                                                  "(0 = off); empty = 2, the default of `vlens match` (with "
                                                  "preset=dvf: the recipe's)")) -> MatchResponse:
        """Dense correspondences between two images: the top matches by the chosen score, drawn; or well-spread
        best-buddy pairs (``pairs`` > 0 or ``preset=dvf``)."""
        from vlens.match.binning import MATCH_BIN_LEVELS
        from vlens.match.refine import DEFAULT_REFINE

        refine = refine or DEFAULT_REFINE
        if bin_levels is None and not preset:
            bin_levels = MATCH_BIN_LEVELS  # the default of `vlens match`; a recipe brings its own
        match_images, draw_matches = svc.matcher()
        a = await read_image(image_a, max_upload_bytes, "image_a")
        b = await read_image(image_b, max_upload_bytes, "image_b")
        spread = pairs > 0 or preset is not None

        def run():
            with svc._match_lock:
                if spread:
                    from vlens.match import draw_pairs, find_pairs

                    found = find_pairs(a, b, svc.backbone_spec, pairs or None, preset=preset, stride=stride,
                                       refine=refine, bin_levels=bin_levels, engine=svc.token_engine)
                    m, extra = found.matches, {"clusters": found.cluster.tolist(), "ranked_by": found.ranked_by}
                    picture = draw_pairs(a, b, m)
                else:
                    m = match_images(a, b, model=svc.backbone_spec, score=score, top=count, refine=refine,
                                     stride=stride, bin_levels=bin_levels, engine=svc.token_engine)
                    extra = {}
                    picture = draw_matches(a, b, m, top=count, by=score)  # at most 384 px high, 4x as wide each
            buf = io.BytesIO()
            picture.save(buf, format="PNG")
            return m, extra, "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

        t0 = time.perf_counter()
        m, extra, url = await run_cpu(run)
        recs = m.to_records() if spread else m.to_records()[:count]
        for r, c in zip(recs, extra.get("clusters", [])):
            r["cluster"] = c
        return MatchResponse(image=url, score=score, refine=refine, stride=stride, bin_levels=bin_levels,
                             model=svc.backbone_spec,
                             matches=[MatchItem(**{k: r.get(k) for k in MatchItem.model_fields}) for r in recs],
                             pairs=len(recs) if spread else 0, preset=preset, ranked_by=extra.get("ranked_by"),
                             took_ms=round((time.perf_counter() - t0) * 1000, 2))

    from vlens.web.explore import add_explore_routes

    add_explore_routes(app, svc, max_upload_bytes)
    return app
