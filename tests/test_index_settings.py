"""Index settings that cannot work never lock the folder (issue 23 item 2), and the index's files follow the
umask (item 17): checked before any embedding where they can be, never stored when they fail, and the kind can
change without re-embedding."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from vlens.errors import ConfigError, IndexError_
from vlens.retrieval.ann import check_buildable
from vlens.retrieval.index import IndexConfig, build_index, update_index
from vlens.retrieval.index_reader import ImageIndex


class CountingEmbedder:
    """The test CLIP, counting the images it embeds."""

    def __init__(self, encoder):
        self.encoder, self.images = encoder, 0

    def __call__(self, images):
        self.images += len(images)
        return self.encoder.encode_images(images)


@pytest.fixture
def folder(tmp_path, shapes_folder) -> Path:
    return shapes_folder(tmp_path / "photos", n=12)


def _build(root, out, enc, given=None, **kw):
    cfg = IndexConfig(model=str(enc.encoder.loaded.path), batch_size=4, **kw)
    return build_index(root, out, cfg, embedder=(enc, enc.encoder.dim), progress=False, log=lambda m: None,
                       workers=0, given=given)


@pytest.mark.parametrize("kind,extra,match", [
    ("ivfpq", {"pq_bytes": 7}, "must divide the vector dimension"),
    ("IVF4096,PQ64", {}, "FAISS cannot build 'IVF4096,PQ64' for 32-d"),  # the test CLIP is 32-d
    ("IVF4096,PQ8", {}, "cannot be built for 12 image"),
    ("IVF16,Flat", {}, "cannot be built for 12 image"),
])
def test_settings_that_cannot_work_stop_before_any_embedding(folder, tmp_path, clip_encoder, kind, extra, match):
    enc = CountingEmbedder(clip_encoder)
    out = tmp_path / "idx"
    with pytest.raises(ConfigError, match=match):
        _build(folder, out, enc, kind=kind, **extra)
    assert enc.images == 0 and not (out / "manifest.json").exists()
    rep = _build(folder, out, enc)  # the folder is free: a plain build works at once
    assert rep.total == 12


def test_ivfpq_on_a_one_image_folder(tmp_path, folder, clip_encoder):
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(next(folder.iterdir()), one / "a.png")
    enc = CountingEmbedder(clip_encoder)
    try:
        rep = _build(one, tmp_path / "idx", enc, kind="ivfpq")
    except ConfigError as exc:  # refused up front: nothing embedded, nothing stored
        assert "cannot be built for 1 image" in str(exc) and enc.images == 0
        assert not (tmp_path / "idx" / "manifest.json").exists()
    else:  # or built: then it must search
        assert rep.total == 1 and ImageIndex(tmp_path / "idx").manifest["kind"] == "ivfpq"


def test_check_buildable_by_hand():
    cfg = IndexConfig(kind="ivfpq", pq_bytes=7)
    with pytest.raises(ConfigError, match="--pq-bytes 7 must divide the vector dimension 32"):
        check_buildable("ivfpq", 32, 1000, cfg)
    check_buildable("ivfpq", 32, 1000, IndexConfig(kind="ivfpq", pq_bytes=8))
    check_buildable("IVF8,Flat", 32, 8, IndexConfig(kind="IVF8,Flat"))
    with pytest.raises(ConfigError, match="IVF8,Flat"):
        check_buildable("IVF8,Flat", 32, 7, IndexConfig(kind="IVF8,Flat"))
    # a big collection is not trial-built, but lists beyond its training sample are refused all the same
    with pytest.raises(ConfigError, match="65536 lists"):
        check_buildable("IVF65536,Flat", 32, 20_000, IndexConfig(kind="IVF65536,Flat"))
    check_buildable("flat", 32, 0, IndexConfig())


def test_kind_changes_without_re_embedding(folder, tmp_path, clip_encoder):
    enc = CountingEmbedder(clip_encoder)
    out = tmp_path / "idx"
    _build(folder, out, enc)
    assert enc.images == 12
    _build(folder, out, enc, given={"kind"}, kind="hnsw")
    ix = ImageIndex(out)
    assert enc.images == 12 and ix.manifest["kind"] == "hnsw" and ix.manifest["config"]["kind"] == "hnsw"
    scores, ids = ix.search(ix.vector(1)[None], 3)
    assert ix.manifest["ann"]["kind"] == "hnsw" and ids.shape == (1, 3)
    ix.close()
    # a rerun that names no setting keeps the stored kind (given: the CLI passes only what was typed)
    _build(folder, out, enc, given=set())
    assert ImageIndex(out).manifest["kind"] == "hnsw" and enc.images == 12
    with pytest.raises(ConfigError, match="must divide"):
        _build(folder, out, enc, given={"kind", "pq_bytes"}, kind="ivfpq", pq_bytes=7)
    assert ImageIndex(out).manifest["kind"] == "hnsw"  # a refused setting is not stored


def test_a_kind_that_fails_after_deletions_is_not_kept(folder, tmp_path, clip_encoder):
    """IVF8 trains on 12 images; after deleting 6, FAISS cannot cluster 6 points into 8 lists. The update keeps
    its work, falls back to exact search and says how to pick another kind; the next update works."""
    enc = CountingEmbedder(clip_encoder)
    out = tmp_path / "idx"
    _build(folder, out, enc, kind="IVF8,Flat")
    for p in sorted(folder.iterdir())[:6]:
        p.unlink()
    with pytest.raises(IndexError_, match="IVF8,Flat' could not be built for 6 image.*--kind KIND"):
        update_index(out, embedder=(enc, clip_encoder.dim), progress=False, log=lambda m: None, workers=0)
    ix = ImageIndex(out)
    assert ix.manifest["kind"] == "flat" and ix.manifest["count"] == 6 and ix.manifest["ann"]["kind"] == "flat"
    ix.close()
    rep = update_index(out, embedder=(enc, clip_encoder.dim), progress=False, log=lambda m: None, workers=0)
    assert rep.total == 6 and enc.images == 12


def test_index_files_follow_the_umask(folder, tmp_path, clip_encoder):
    old = os.umask(0o002)
    try:
        out = tmp_path / "idx"
        _build(folder, out, CountingEmbedder(clip_encoder))
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir() if p.is_file()}
    finally:
        os.umask(old)
    assert {"manifest.json", "meta.sqlite", "lock", "vectors.faiss"} <= modes.keys()
    assert set(modes.values()) == {0o664}, modes


@pytest.mark.parametrize("kind,why", [("HNSW0", "FAISS crashed \\(SIGABRT"), ("HNSW1", "FAISS crashed \\(SIGSEGV"),
                                      ("PCA16,Flat", "a PCA keeps at most"), ("IVF2,Flat,Junk", "FAISS cannot build")])
def test_factory_strings_that_crash_or_fail_faiss_are_refused_in_one_line(kind, why):
    """HNSW0 aborts FAISS, HNSW1 segfaults it: tried in a child process, each is a one-line refusal."""
    with pytest.raises(ConfigError, match=why) as exc:
        check_buildable(kind, 32, 12, IndexConfig(kind=kind))
    assert "\n" not in str(exc.value)


def test_pre_transform_kinds_train_their_transform_and_search(folder, tmp_path, clip_encoder):
    """RR32 is a random rotation (inner products unchanged): the same neighbours as exact search; PCA8 is trained
    on the stored vectors (8 of 32 dimensions kept) and searches."""
    import numpy as np

    enc = CountingEmbedder(clip_encoder)
    _build(folder, tmp_path / "flat", enc)
    _build(folder, tmp_path / "rr", enc, kind="RR32,Flat")
    _build(folder, tmp_path / "pca", enc, kind="PCA8,Flat")
    flat, rr, pca = (ImageIndex(tmp_path / n) for n in ("flat", "rr", "pca"))
    q = flat.vector(1)[None]
    np.testing.assert_array_equal(rr.search(q, 5)[1], flat.search(q, 5)[1])
    assert rr.manifest["kind"] == "RR32,Flat" and rr.manifest["ann"]["recall_at_10"] == 1.0
    s, ids = pca.search(q, 5)
    assert ids.shape == (1, 5) and ids[0, 0] == flat.search(q, 1)[1][0, 0]  # a stored vector finds itself
    for ix in (flat, rr, pca):
        ix.close()


def test_a_stored_kind_that_crashes_faiss_is_refused_by_update(folder, tmp_path, clip_encoder):
    """A manifest naming HNSW1 (written before kinds were tried) makes update refuse in one line, not segfault."""
    from vlens.retrieval.index_store import read_manifest, write_manifest

    enc = CountingEmbedder(clip_encoder)
    out = tmp_path / "idx"
    _build(folder, out, enc)
    m = read_manifest(out)
    m["kind"] = m["config"]["kind"] = "HNSW1"
    write_manifest(out, m)
    with pytest.raises(IndexError_, match="stored index kind cannot be built: FAISS crashed.*--kind flat`") as exc:
        update_index(out, embedder=(enc, clip_encoder.dim), progress=False, log=lambda m: None, workers=0)
    assert "\n" not in str(exc.value)


def test_cli_build_with_a_crashing_kind_is_one_line_and_stores_nothing(folder, tmp_path, tiny_clip):
    """In a separate process (a regression would kill the test runner): rc 1, one error line, no manifest."""
    import subprocess
    import sys

    out = tmp_path / "idx"
    r = subprocess.run([sys.executable, "-m", "vlens", "index", "build", str(folder), "--out", str(out), "--model",
                        str(tiny_clip), "--kind", "HNSW0", "--workers", "0"], capture_output=True, text=True,
                       timeout=120)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 1 and len(errors) == 1 and "FAISS crashed" in errors[0], r.stderr
    assert "a bug in vlens" not in r.stderr and not (out / "manifest.json").exists()
