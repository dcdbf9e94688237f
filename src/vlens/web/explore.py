"""The web app's Explore tab and the Caption tab's "why these words": routes over vlens.match.explore,
vlens.match.attention and Captioner.explain.

A click must answer fast, so each uploaded image is kept (at most ``STORE_SIDE`` px on its longer side, at most
``MAX_IMAGES`` of them) under an id that is the SHA-256 of its pixels, and everything derived from it is cached
under that id plus the settings that produced it: dense features per (image, model, layer, facet, size), the
joint PCA projection per (pair, settings, pca), attention maps per (image, model, layer, size). The same picture
uploaded twice gets the same id and reuses the work; a different picture, or different settings, never does.
An id the server no longer holds (evicted, or the server restarted) gets 404, and the page uploads again.
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
import time
from collections import OrderedDict
from typing import Literal

from fastapi import Depends, FastAPI, File, Form, HTTPException, UploadFile
from fastapi import Path as FastPath
from fastapi.responses import Response
from pydantic import BaseModel, Field

from vlens.errors import VlensError
from vlens.web.shared import Coordinate, Layer, decoding_form, read_image, run_cpu, upload_label

STORE_SIDE = 1024  # longer side of a stored image (the model input is at most 896 px anyway)
MAX_IMAGES = 24
MAX_FEATURES = 24
MAX_PAIRS = 12
HEAT_SIDE = 640  # longer side of the heatmap picture sent back
ID_PATTERN = "^[0-9a-f]{16}$"
GONE = {404: {"description": "The server does not hold this image id (evicted or restarted): upload it again."},
        422: {"description": "Invalid request (the detail says which field and why)."}}


class LRU:
    """A small thread-safe least-recently-used map with hit / miss counters."""

    def __init__(self, size: int):
        self.size, self.hits, self.misses = size, 0, 0
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                self.hits += 1
                return self._d[key]
            self.misses += 1
            return None

    def put(self, key, value):
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._d)


def image_id(img) -> str:
    """Content id of an RGB image: SHA-256 of its size and pixels (16 hex digits)."""
    h = hashlib.sha256(f"{img.width}x{img.height}".encode())
    h.update(img.tobytes())
    return h.hexdigest()[:16]


class ExploreCache:
    """Images by content id and what the explorer computed from them."""

    def __init__(self, engine: str = "torch"):
        self.engine = engine  # what runs the ViT token facet (vlens.engines): the server's --engine
        self.images = LRU(MAX_IMAGES)
        self.features = LRU(MAX_FEATURES)
        self.pairs = LRU(MAX_PAIRS)
        self.attention = LRU(8)
        self.compute_lock = threading.Lock()  # one model forward at a time

    def add(self, img) -> str:
        from PIL import ImageOps

        img = img.convert("RGB")
        if max(img.size) > STORE_SIDE:
            img = ImageOps.contain(img, (STORE_SIDE, STORE_SIDE))
        key = image_id(img)
        if self.images.get(key) is None:
            self.images.put(key, img)
        return key

    def image(self, key: str):
        img = self.images.get(key)
        if img is None:
            raise HTTPException(404, f"image {key} is not held by the server (evicted or the server restarted); "
                                     "upload it again")
        return img

    def features_of(self, key: str, spec: str, layer: int, facet: str, size: int):
        """(DenseFeatures, whether they came from the cache)."""
        from vlens.match.features import extract_features

        fkey = (key, spec, layer, facet, size)
        f = self.features.get(fkey)
        if f is not None:
            return f, True
        img = self.image(key)
        with self.compute_lock:
            f = extract_features([img], spec, layer=layer, facet=facet, size=size, engine=self.engine)[0]
        return self.features.put(fkey, f), False

    def pair(self, a: str, b: str, spec: str, layer: int, facet: str, size: int, pca: int | None):
        """(fa, fb, projected a, projected b, whether everything came from the cache)."""
        from vlens.match.explore import project_pair

        fa, hit_a = self.features_of(a, spec, layer, facet, size)
        fb, hit_b = self.features_of(b, spec, layer, facet, size)
        pkey = (a, b, spec, layer, facet, size, pca)
        proj = self.pairs.get(pkey)
        cached = proj is not None and hit_a and hit_b
        if proj is None:
            proj = self.pairs.put(pkey, project_pair(fa, fb, pca))
        return fa, fb, proj[0], proj[1], cached


# ----------------------------------------------------------------------------------------------- schemas


class ExploreImage(BaseModel):
    id: str = Field(description="Content id (SHA-256 of the pixels): the same picture always gets the same id.")
    width: int = Field(description="Width of the stored image; click coordinates are in these pixels.")
    height: int
    url: str


class DemoPair(BaseModel):
    a: ExploreImage
    b: ExploreImage
    shift: list[float] = Field(description="B is A shifted by this (dx, dy): A's pixel p is B's p - shift.")


class PointRequest(BaseModel):
    image_a: str = Field(..., pattern=ID_PATTERN, description="Id of image A (from /api/explore/images).")
    image_b: str = Field(..., pattern=ID_PATTERN, description="Id of image B.")
    x: float = Coordinate(STORE_SIDE, "The point in A's pixels (from the left).")
    y: float = Coordinate(STORE_SIDE, "The point in A's pixels (from the top).")
    layer: Layer = -1
    facet: Literal["token", "key", "query", "value"] = "token"
    pca: int = Field(0, ge=0, le=256, description="Joint PCA components (0 = off, the default of `vlens match`).")
    size: int = Field(448, ge=32, le=896, description="Longer side of the model input in pixels.")
    top_k: int = Field(5, ge=1, le=50)


class PointCandidate(BaseModel):
    xy: list[float]
    similarity: float
    feature_distance: float


class PointResponse(BaseModel):
    heatmap: str = Field(description="B with the similarity heatmap over it (PNG data URL, B's aspect).")
    query_xy: list[float]
    src_xy: list[float] = Field(description="Centre of the A patch under the point.")
    best: PointCandidate
    peak_xy: list[float] = Field(description="Where the similarity map peaks, in B's pixels.")
    cycle_xy: list[float] = Field(description="Where the cycle A -> B -> A lands, in A's pixels.")
    cycle_distance: float
    mutual: bool
    candidates: list[PointCandidate]
    similarity_range: list[float]
    size_b: list[int]
    model: str
    cached: bool = Field(description="True when the features and PCA came from the cache.")
    took_ms: float


class AttentionRequest(BaseModel):
    image: str = Field(..., pattern=ID_PATTERN)
    layer: Layer = -1
    size: int = Field(448, ge=32, le=896)


class AttentionPanel(BaseModel):
    title: str
    image: str = Field(description="PNG data URL at the image's size.")
    peak: float | None = None
    on_prefix: float | None = None


class AttentionResponse(BaseModel):
    panels: list[AttentionPanel]
    heads: int
    layer: int
    model: str
    took_ms: float


class ExplainCandidate(BaseModel):
    token: str
    p_model: float
    p_sample: float
    kept: bool


class ExplainStep(BaseModel):
    token: str
    p_model: float
    p_sample: float
    rank: int
    eligible: int
    effective_choices: float
    candidates: list[ExplainCandidate]


class ExplainResponse(BaseModel):
    caption: str
    greedy_caption: str
    summary: dict
    steps: list[ExplainStep]
    settings: dict
    notes: list[str]
    model: str
    took_ms: float


# ----------------------------------------------------------------------------------------------- routes


def _png_url(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # fast: these are sent once and not kept
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _info(key: str, img) -> ExploreImage:
    return ExploreImage(id=key, width=img.width, height=img.height, url=f"/api/explore/images/{key}")


def add_explore_routes(app: FastAPI, svc, max_upload_bytes: int) -> None:
    """Register the Explore endpoints and the caption explainer on ``app`` (``svc``: the app's Services)."""
    cache = ExploreCache(getattr(svc, "token_engine", "torch"))
    app.state.explore = cache

    @app.post("/api/explore/images", response_model=ExploreImage, tags=["explore"])
    async def upload(file: UploadFile = File(..., description="An image to explore.")) -> ExploreImage:
        """Keep an image for exploring (longer side at most 1024 px); returns its content id."""
        img = await read_image(file, max_upload_bytes)
        side = await run_cpu(_smallest_side, svc.backbone_spec)
        if side and min(img.size) < side:  # refused now, not on every later click
            raise HTTPException(422, f"{upload_label(file, 'file')}: {img.width}x{img.height} pixels is too small "
                                     f"for {svc.backbone_spec}, which needs at least one {side} px patch: upload an "
                                     f"image at least {side} px on its shorter side")
        key = await run_cpu(cache.add, img)
        return _info(key, cache.image(key))

    @app.post("/api/explore/demo", response_model=DemoPair, tags=["explore"])
    async def demo() -> DemoPair:
        """A ready pair: a photo (scikit-image's cat) and a shifted crop of it."""
        def make():
            from vlens.data.photos import photo_paths
            from vlens.images import load_image

            img = load_image(photo_paths(("chelsea",))[0])
            dx, dy = 48, 32
            crop = img.crop((dx, dy, img.width, img.height))
            return cache.add(img), cache.add(crop), [float(dx), float(dy)]

        a, b, shift = await run_cpu(make)
        return DemoPair(a=_info(a, cache.image(a)), b=_info(b, cache.image(b)), shift=shift)

    @app.get("/api/explore/images/{key}", tags=["explore"],
             responses={200: {"content": {"image/png": {}}}, **GONE})
    def stored(key: str = FastPath(..., pattern=ID_PATTERN)):
        """A stored image, as the explorer sees it (PNG)."""
        buf = io.BytesIO()
        cache.image(key).save(buf, format="PNG", compress_level=1)
        return Response(buf.getvalue(), media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.post("/api/explore/point", response_model=PointResponse, tags=["explore"], responses=GONE)
    async def point(req: PointRequest) -> PointResponse:
        """Where a point of A lands in B: similarity heatmap, best match, its cycle back into A, top-k."""
        a_img, b_img = cache.image(req.image_a), cache.image(req.image_b)
        if not (req.x < a_img.width and req.y < a_img.height):
            raise HTTPException(422, f"the point ({req.x:g}, {req.y:g}) is outside image A "
                                     f"({a_img.width}x{a_img.height})")

        def run():
            from PIL import ImageOps

            from vlens.match.explore import correspond
            from vlens.match.explore_figures import heat_overlay

            t0 = time.perf_counter()
            fa, fb, pa, pb, cached = cache.pair(req.image_a, req.image_b, svc.backbone_spec, req.layer,
                                                req.facet, req.size, req.pca or None)
            pm = correspond(pa, pb, fa, fb, (req.x, req.y), req.top_k)
            shown = ImageOps.contain(b_img, (HEAT_SIDE, HEAT_SIDE)) if max(b_img.size) > HEAT_SIDE else b_img
            lo, hi = float(pm.similarity.min()), float(pm.similarity.max())
            url = _png_url(heat_overlay(shown, pm.similarity, lo, hi))
            peak_xy = [round(float(v), 2) for v in fb.centers[int(pm.similarity.argmax())]]
            d = pm.to_dict()
            return PointResponse(
                heatmap=url, query_xy=d["query_xy"], src_xy=d["src_xy"], best=PointCandidate(**_cand(d["best"])),
                peak_xy=peak_xy, cycle_xy=d["cycle_xy"], cycle_distance=d["cycle_distance"], mutual=d["mutual"],
                candidates=[PointCandidate(**_cand(c)) for c in d["candidates"]],
                similarity_range=[round(lo, 4), round(hi, 4)], size_b=[b_img.width, b_img.height],
                model=svc.backbone_spec, cached=cached, took_ms=round((time.perf_counter() - t0) * 1000, 2))

        return await run_cpu(run)

    @app.post("/api/explore/attention", response_model=AttentionResponse, tags=["explore"], responses=GONE)
    async def attention(req: AttentionRequest) -> AttentionResponse:
        """[CLS] attention of one block per head, their mean, and the features' PCA as RGB."""
        img = cache.image(req.image)

        def run():
            import numpy as np
            from PIL import Image

            from vlens.match.attention import cls_attention
            from vlens.match.draw import pca_rgb
            from vlens.match.explore_figures import attention_overlays

            t0 = time.perf_counter()
            key = (req.image, svc.backbone_spec, req.layer, req.size)
            got = cache.attention.get(key)
            if got is None:
                with cache.compute_lock:
                    att = cls_attention(img, svc.backbone_spec, layer=req.layer, size=req.size)
                f, _ = cache.features_of(req.image, svc.backbone_spec, req.layer, "token", req.size)
                rgb = pca_rgb(f.descriptors)[0]
                panels = [AttentionPanel(title="features: 3 PCA components as RGB", image=_png_url(
                    Image.fromarray((rgb * 255).astype(np.uint8)).resize(img.size, Image.NEAREST)))]
                overlays = attention_overlays(img, att)
                panels.append(AttentionPanel(title=f"mean of {att.heads} heads", image=_png_url(overlays[-1]),
                                             peak=round(float(att.mean.max()), 5)))
                for h in range(att.heads):
                    panels.append(AttentionPanel(
                        title=f"head {h + 1}", image=_png_url(overlays[h]), peak=round(float(att.maps[h].max()), 5),
                        on_prefix=round(float(att.prefix_mass[h]), 5)))
                got = cache.attention.put(key, (panels, att.heads, att.layer))
            panels, heads, layer = got
            return AttentionResponse(panels=panels, heads=heads, layer=layer, model=svc.backbone_spec,
                                     took_ms=round((time.perf_counter() - t0) * 1000, 2))

        return await run_cpu(run)

    @app.post("/api/caption/explain", response_model=ExplainResponse, tags=["caption"])
    async def explain(file: UploadFile = File(..., description="The image to caption."),
                      decoding: dict = Depends(decoding_form),
                      show: int = Form(8, ge=1, le=30, description="candidates listed per step")) -> ExplainResponse:
        """Why these words: the caption and, per generated token, its competitors with their probabilities
        under these settings and under the model, and which ones the filters removed."""

        from vlens.caption import DecodeSettings

        img = await read_image(file, max_upload_bytes)
        settings = DecodeSettings(**decoding)
        settings, notes = settings.validated()
        cap = svc.captioner()
        t0 = time.perf_counter()
        e = await run_cpu(lambda: cap.explain(img, settings, show=show))
        d = e.to_dict()
        steps = [ExplainStep(**{k: st[k] for k in ExplainStep.model_fields if k != "candidates"},
                             candidates=[ExplainCandidate(**{k: c[k] for k in ExplainCandidate.model_fields})
                                         for c in st["candidates"]]) for st in d["steps"]]
        return ExplainResponse(
            caption=d["caption"], greedy_caption=d["greedy_caption"], summary=d["summary"], steps=steps,
            settings={"strategy": e.settings.strategy, "top_k": e.settings.top_k, "top_p": e.settings.top_p,
                      "temperature": e.settings.temperature, "seed": e.settings.seed},
            notes=notes + e.notes, model=cap.spec, took_ms=round((time.perf_counter() - t0) * 1000, 2))


def _smallest_side(spec: str) -> int | None:
    """The shortest image side the explore model can describe (one patch); None when the model does not load
    (the explore calls then say why)."""
    from vlens.match.features import load_backbone, smallest_side

    try:
        return smallest_side(load_backbone(spec))
    except VlensError:
        return None


def _cand(c: dict) -> dict:
    return {"xy": c["xy"], "similarity": c["similarity"], "feature_distance": c["feature_distance"]}
