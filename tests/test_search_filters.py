"""Search filters are applied inside the vector search: on 1,000 random vectors with random photo metadata, every
filter's top k equals brute force (numpy over the vectors that pass, by an independent reading of the metadata)."""

from __future__ import annotations

import datetime as dt
import math
import time

import numpy as np
import pytest

from vlens.errors import ConfigError
from vlens.retrieval.filters import Filters, folder_matches, parse_time

N, D, K = 1000, 32, 10
FOLDERS = ["", "trips", "trips/2023/day1", "trips/2024/day1", "trips/2024/day2", "home", "home/cats"]
CAMERAS = [("Apple", "iPhone 13"), ("Canon", "Canon EOS R5"), ("FUJIFILM", "X-T4"), (None, None)]
FORMATS = ["jpg", "jpeg", "heic", "png", "tiff", "dng"]
PLACES = [(48.8584, 2.2945), (40.6892, -74.0445), (-33.8568, 151.2153)]  # Paris, New York, Sydney


def _library(folder, kind: str, seed: int = 0):
    """An index folder of N random unit vectors with random metadata (NULLs included), as build writes it."""
    from vlens.retrieval.index_faiss import build_faiss
    from vlens.retrieval.index_store import IndexConfig, connect, write_manifest

    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((N, D)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    t0 = dt.datetime(2023, 1, 1, tzinfo=dt.UTC).timestamp()
    meta = []
    for _ in range(N):
        cam = CAMERAS[rng.integers(len(CAMERAS))]
        lat = lon = None
        if rng.random() < 0.7:
            plat, plon = PLACES[rng.integers(len(PLACES))]
            lat, lon = plat + rng.normal(0, 0.1), plon + rng.normal(0, 0.1)  # ~0-30 km around the place
        taken = None if rng.random() < 0.1 else float(t0 + rng.uniform(0, 2 * 365 * 86400))
        meta.append({"taken_at": taken, "camera_make": cam[0], "camera_model": cam[1], "gps_lat": lat,
                     "gps_lon": lon, "folder": FOLDERS[rng.integers(len(FOLDERS))],
                     "format": FORMATS[rng.integers(len(FORMATS))]})
    folder.mkdir()
    con = connect(folder)
    have = {r[1] for r in con.execute("PRAGMA table_info(images)")}
    for col, typ in [("taken_at", "REAL"), ("camera_make", "TEXT"), ("camera_model", "TEXT"), ("gps_lat", "REAL"),
                     ("gps_lon", "REAL"), ("folder", "TEXT"), ("format", "TEXT")]:
        if col not in have:  # an index made before the metadata columns existed in vlens's schema
            con.execute(f"ALTER TABLE images ADD COLUMN {col} {typ}")
    with con:
        for i, (v, m) in enumerate(zip(vecs, meta)):
            path = f"{m['folder']}/img{i:04d}.{m['format']}".lstrip("/")
            con.execute("INSERT INTO images (id, path, size, mtime_ns, sha256, vector, added, taken_at, camera_make, "
                        "camera_model, gps_lat, gps_lon, folder, format) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (i + 1, path, 1, 1, f"{i:064x}", v.tobytes(), time.time(), m["taken_at"], m["camera_make"],
                         m["camera_model"], m["gps_lat"], m["gps_lon"], m["folder"], m["format"]))
    manifest = {"format": 1, "model": "builtin:clip-tiny", "dim": D, "metric": "cosine", "kind": kind,
                "root": str(folder), "config": {"kind": kind}, "count": N, "ann": {}}
    write_manifest(folder, manifest)
    build_faiss(folder, con, manifest, IndexConfig(kind=kind), log=lambda m: None)
    con.close()
    return vecs, meta


def _km(lat1, lon1, lat2, lon2):
    """Spherical law of cosines (a different formula from the haversine the filter uses)."""
    a, b = math.radians(lat1), math.radians(lat2)
    c = math.sin(a) * math.sin(b) + math.cos(a) * math.cos(b) * math.cos(math.radians(lon2 - lon1))
    return 6371.0088 * math.acos(max(-1.0, min(1.0, c)))


def _day(s):
    return dt.datetime.fromisoformat(s).replace(tzinfo=dt.UTC).timestamp()


# (CLI-style filter arguments, the same rule written out by hand on one image's metadata)
CASES = [
    ({"after": "2024-03-01"}, lambda m: m["taken_at"] is not None and m["taken_at"] >= _day("2024-03-01")),
    ({"before": "2023-06-30"}, lambda m: m["taken_at"] is not None and m["taken_at"] < _day("2023-07-01")),
    ({"after": "2023-05-01T12:00", "before": "2023-11-15"},
     lambda m: m["taken_at"] is not None and _day("2023-05-01T12:00") <= m["taken_at"] < _day("2023-11-16")),
    ({"after": "2024"}, lambda m: m["taken_at"] is not None and m["taken_at"] >= _day("2024-01-01")),
    ({"camera": "iphone"}, lambda m: m["camera_model"] == "iPhone 13"),
    ({"camera": "CANON eos"}, lambda m: m["camera_make"] == "Canon"),
    ({"camera": "fuji"}, lambda m: m["camera_make"] == "FUJIFILM"),
    ({"folder": "trips"}, lambda m: m["folder"] == "trips" or m["folder"].startswith("trips/")),
    ({"folder": "trips/2024*"}, lambda m: m["folder"] in ("trips/2024/day1", "trips/2024/day2")),
    ({"folder": "trips/*/day1"}, lambda m: m["folder"] in ("trips/2023/day1", "trips/2024/day1")),
    ({"folder": "."}, lambda m: m["folder"] == ""),
    ({"folder": "home/cats"}, lambda m: m["folder"] == "home/cats"),
    ({"near": "48.8584,2.2945,10"},
     lambda m: m["gps_lat"] is not None and _km(48.8584, 2.2945, m["gps_lat"], m["gps_lon"]) <= 10),
    ({"near": "-33.8568,151.2153,25"},
     lambda m: m["gps_lat"] is not None and _km(-33.8568, 151.2153, m["gps_lat"], m["gps_lon"]) <= 25),
    ({"formats": "jpg"}, lambda m: m["format"] in ("jpg", "jpeg")),
    ({"formats": "HEIC,.dng"}, lambda m: m["format"] in ("heic", "dng")),
    ({"formats": "tif"}, lambda m: m["format"] == "tiff"),
    ({"camera": "iphone", "folder": "trips", "after": "2023-06-01", "near": "48.8584,2.2945,30"},
     lambda m: m["camera_model"] == "iPhone 13" and (m["folder"] + "/").startswith("trips/")
     and m["taken_at"] is not None and m["taken_at"] >= _day("2023-06-01") and m["gps_lat"] is not None
     and _km(48.8584, 2.2945, m["gps_lat"], m["gps_lon"]) <= 30),
]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_every_filter_equals_brute_force(tmp_path, kind):
    from vlens.retrieval.index_reader import ImageIndex
    from vlens.retrieval.search import Searcher

    vecs, meta = _library(tmp_path / "idx", kind)
    s = Searcher(ImageIndex(tmp_path / "idx"), encoder=object())
    assert s.index.faiss is not None and not s.index.stale
    queries = np.random.default_rng(1).standard_normal((4, D)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    for args, rule in CASES:
        f = Filters.from_text(**args)
        mask = np.array([rule(m) for m in meta])
        assert 0 < mask.sum() < N, args  # each case keeps some and drops some
        passed = s.allowed(f)
        assert sorted(passed.tolist()) == (np.nonzero(mask)[0] + 1).tolist(), args
        for q in queries:
            scores = vecs @ q
            scores[~mask] = -np.inf
            want = np.argsort(-scores, kind="stable")[:min(K, int(mask.sum()))] + 1
            hits = s.vectors(q[None], K, f)[0]
            assert [h.id for h in hits] == want.tolist(), (kind, args)
            np.testing.assert_allclose([h.score for h in hits], scores[want - 1], atol=1e-5)
    # a filter nothing passes: no hits, not the unfiltered top k
    assert s.vectors(queries[:1], K, Filters.from_text(camera="hasselblad"))[0] == []
    s.index.close()


def test_many_allowed_on_ann_oversamples(tmp_path, monkeypatch):
    """Above the exact limit an ANN index searches k/fraction candidates: the filtered top k keep its recall."""
    from vlens.retrieval import index_reader
    from vlens.retrieval.index_reader import ImageIndex
    from vlens.retrieval.search import Searcher

    vecs, meta = _library(tmp_path / "idx", "hnsw")
    monkeypatch.setattr(index_reader, "EXACT_FILTERED", 0)
    s = Searcher(ImageIndex(tmp_path / "idx"), encoder=object())
    f = Filters.from_text(folder="trips")
    mask = np.array([(m["folder"] + "/").startswith("trips/") for m in meta])
    queries = np.random.default_rng(2).standard_normal((20, D)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    recall = []
    for q in queries:
        scores = np.where(mask, vecs @ q, -np.inf)
        want = set((np.argsort(-scores)[:K] + 1).tolist())
        hits = s.vectors(q[None], K, f)[0]
        assert len(hits) == K and all(mask[h.id - 1] for h in hits)
        recall.append(len(want & {h.id for h in hits}) / K)
    assert np.mean(recall) >= 0.9, recall
    s.index.close()


def test_filter_values_checked():
    assert folder_matches("a/b/c", "a") and folder_matches("a/b/c", "a/*/c") and not folder_matches("ab", "a")
    assert folder_matches("", ".") and not folder_matches("a", ".")
    assert parse_time("2024-02-28", end=True) == _day("2024-02-29")
    for args, said in [({"after": "yesterday"}, "not a date"), ({"near": "1,2"}, "LAT,LON,KM"),
                       ({"near": "95,2,3"}, "latitude"), ({"near": "1,2,0"}, "radius"),
                       ({"after": "2024-05-01", "before": "2024-04-01"}, "nothing could match")]:
        with pytest.raises(ConfigError, match=said):
            Filters.from_text(**args)


def test_index_without_metadata_says_update():
    """An index whose table lacks the metadata columns: a filter says to run `vlens index update`."""
    import sqlite3

    from vlens.retrieval.filters import matching_ids

    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE images (id INTEGER PRIMARY KEY, path TEXT)")
    with pytest.raises(ConfigError, match="vlens index update"):
        matching_ids(con, Filters.from_text(camera="x"))
    assert matching_ids(con, Filters()).tolist() == []
