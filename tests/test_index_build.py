"""The image index: build, update (add / change / delete / rename / touch), skips, exact and ANN search, errors."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlens.errors import ConfigError, IndexError_
from vlens.retrieval.ann import exact_topk, recall_at_k
from vlens.retrieval.index import IndexConfig, build_index, update_index
from vlens.retrieval.index_reader import ImageIndex
from vlens.retrieval.index_store import index_lock, safe_join
from vlens.retrieval.search import Searcher, contact_sheet, search


@pytest.fixture
def photos(tmp_path, shapes_folder) -> Path:
    """A small photo folder: 12 test images, one in a sub-folder, plus a broken file and a text file."""
    root = shapes_folder(tmp_path / "photos")
    (root / "sub").mkdir()
    (root / "test_00011.png").rename(root / "sub" / "test_00011.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


def _build(root, out, encoder, **kw):
    force = kw.pop("force", False)
    cfg = IndexConfig(model=str(encoder.loaded.path), batch_size=kw.pop("batch_size", 4), **kw)
    return build_index(root, out, cfg, force=force, embedder=(encoder.encode_images, encoder.dim), progress=False,
                       log=lambda m: None)


def _rows(out) -> dict[str, tuple[int, np.ndarray]]:
    con = sqlite3.connect(Path(out) / "meta.sqlite")
    rows = {p: (i, np.frombuffer(v, np.float32)) for i, p, v in con.execute("SELECT id, path, vector FROM images")}
    con.close()
    return rows


def test_build_stores_every_readable_image(photos, tmp_path, clip_encoder):
    out = tmp_path / "idx"
    rep = _build(photos, out, clip_encoder)
    assert rep.total == rep.added == rep.embedded == 12
    assert [p for p, _ in rep.skipped] == ["broken.jpg"]
    rows = _rows(out)
    assert "sub/test_00011.png" in rows and "notes.txt" not in rows
    # Stored vectors are the model's embeddings of the files (an independent re-embedding).
    from vlens.images import load_image

    ref = clip_encoder.encode_images([load_image(photos / "test_00003.png")])[0]
    np.testing.assert_allclose(rows["test_00003.png"][1], ref, atol=1e-5)
    ix = ImageIndex(out)
    info = ix.info()
    assert info["count"] == 12 and info["dim"] == clip_encoder.dim and info["metric"] == "cosine"
    assert info["skipped"][0]["path"] == "broken.jpg" and not ix.stale
    m = ix.manifest
    assert m["model"] == str(clip_encoder.loaded.path) and m["vlens_version"] and m["kind"] == "flat"
    ix.close()


def test_search_matches_brute_force(photos, tmp_path, clip_encoder):
    out = tmp_path / "idx"
    _build(photos, out, clip_encoder)
    s = Searcher(out, encoder=clip_encoder)
    rows = _rows(out)
    paths = list(rows)
    mat = np.stack([rows[p][1] for p in paths])                      # (N, d)
    q = clip_encoder.encode_texts(["a red circle"])[0]
    expect = np.argsort(-(mat @ q), kind="stable")[:5]
    hits = s.text("a red circle", k=5)
    assert [h.path for h in hits] == [paths[i] for i in expect]
    np.testing.assert_allclose([h.score for h in hits], (mat @ q)[expect], atol=1e-5)
    # An indexed image finds itself first with cosine 1.
    hit = s.image(photos / "test_00004.png", k=3)[0]
    assert hit.path == "test_00004.png" and hit.score == pytest.approx(1.0, abs=1e-4)
    assert s.similar(hit.id, k=1)[0].id == hit.id
    assert len(s.text("x", k=50)) == 12  # k larger than the collection
    with pytest.raises(ConfigError, match="empty"):
        s.text("   ")
    with pytest.raises(ConfigError):
        search(out, query=None, image=None)


def test_update_add_change_delete_rename_touch(photos, tmp_path, clip_encoder, shapes_dir):
    out = tmp_path / "idx"
    _build(photos, out, clip_encoder)
    before = _rows(out)
    # add two, change one (new pixels), delete one, rename one, touch one (mtime only)
    train = sorted((shapes_dir / "images").glob("train_*.png"))
    shutil.copy(train[0], photos / "new_a.png")
    shutil.copy(train[1], photos / "sub" / "new_b.png")
    Image.open(train[2]).save(photos / "test_00001.png")
    (photos / "test_00002.png").unlink()
    os.rename(photos / "test_00005.png", photos / "sub" / "renamed.png")
    t = time.time() + 5
    os.utime(photos / "test_00006.png", (t, t))
    rep = update_index(out, embedder=(clip_encoder.encode_images, clip_encoder.dim), progress=False)
    assert (rep.added, rep.changed, rep.removed, rep.renamed) == (2, 1, 1, 1)
    assert rep.embedded == 3 and rep.total == 13
    after = _rows(out)
    assert "test_00002.png" not in after and "test_00005.png" not in after
    assert after["sub/renamed.png"][0] == before["test_00005.png"][0]  # same id, vector kept
    np.testing.assert_array_equal(after["sub/renamed.png"][1], before["test_00005.png"][1])
    assert after["test_00006.png"][0] == before["test_00006.png"][0]  # touched: not re-embedded
    assert after["test_00001.png"][0] != before["test_00001.png"][0]  # changed: new row, new vector
    assert not np.allclose(after["test_00001.png"][1], before["test_00001.png"][1])
    # The FAISS index answers for the new files and never returns the deleted one.
    s = Searcher(out, encoder=clip_encoder)
    assert s.image(photos / "new_a.png", k=1)[0].path == "new_a.png"
    assert all(h.path != "test_00002.png" for h in s.text("a shape", k=20))
    # Nothing changed: nothing embedded.
    rep = update_index(out, embedder=(clip_encoder.encode_images, clip_encoder.dim), progress=False)
    assert rep.embedded == 0 and rep.unchanged == 13 and rep.total == 13
    # A duplicate of an indexed file reuses its vector instead of embedding again.
    shutil.copy(photos / "new_a.png", photos / "dup.png")
    rep = update_index(out, embedder=(clip_encoder.encode_images, clip_encoder.dim), progress=False)
    assert rep.embedded == 0 and rep.added == 1 and rep.reused == 1


def test_skipped_file_is_retried_only_when_it_changes(photos, tmp_path, clip_encoder, shapes_dir):
    out = tmp_path / "idx"
    _build(photos, out, clip_encoder)
    calls = []

    def counting(images):
        calls.append(len(images))
        return clip_encoder.encode_images(images)

    rep = update_index(out, embedder=(counting, clip_encoder.dim), progress=False)
    assert sum(calls) == 0 and [p for p, _ in rep.skipped] == ["broken.jpg"]
    shutil.copy(min((shapes_dir / "images").glob("val_*.png")), photos / "broken.jpg")  # now readable
    rep = update_index(out, embedder=(counting, clip_encoder.dim), progress=False)
    assert sum(calls) == 1 and rep.added == 1 and rep.skipped == []


def test_ann_indexes_measure_recall(tmp_path, clip_encoder, shapes_dir):
    for kind in ("ivf", "hnsw"):
        out = tmp_path / kind
        _build(shapes_dir, out, clip_encoder, kind=kind, batch_size=64)
        ix = ImageIndex(out)
        ann = ix.info()["ann"]
        assert ann["kind"] == kind and 0 <= ann["recall_at_10"] <= 1 and ann["curve"]
        assert ann["recall_at_10"] >= 0.95
        q = ix.vector(5)[None]
        _, ids = ix.search(q, 3)
        assert ids[0][0] == 5
        ix.close()


def test_exact_topk_streaming_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 16)).astype(np.float32)
    q = rng.normal(size=(7, 16)).astype(np.float32)
    ids = np.arange(1000) * 3 + 1
    chunks = [(ids[i:i + 128], x[i:i + 128]) for i in range(0, 1000, 128)]
    s, i = exact_topk(q, chunks, 10)
    full = q @ x.T
    order = np.argsort(-full, axis=1)[:, :10]
    np.testing.assert_array_equal(i, ids[order])
    np.testing.assert_allclose(s, np.take_along_axis(full, order, 1), rtol=1e-6)
    s, i = exact_topk(q, [(ids[:3], x[:3])], 5)  # fewer than k: padded with -1
    assert (i[:, 3:] == -1).all() and np.isinf(s[:, 3:]).all()


def test_recall_at_k_by_hand():
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[1, 2, 9, 9], [8, 7, 6, 5]])
    assert recall_at_k(found, truth) == pytest.approx((2 / 4 + 4 / 4) / 2)


def test_stale_faiss_falls_back_to_exact(photos, tmp_path, clip_encoder):
    out = tmp_path / "idx"
    _build(photos, out, clip_encoder)
    ref = Searcher(out, encoder=clip_encoder).text("a blue square", k=4)
    con = sqlite3.connect(out / "meta.sqlite")  # a write the FAISS file has not seen (as if killed right after)
    with con:
        con.execute("UPDATE state SET value = value + 1 WHERE key='generation'")
    con.close()
    s = Searcher(out, encoder=clip_encoder)
    assert s.index.stale
    assert [h.id for h in s.text("a blue square", k=4)] == [h.id for h in ref]
    update_index(out, embedder=(clip_encoder.encode_images, clip_encoder.dim), progress=False)
    assert not ImageIndex(out).stale


def test_lock_refuses_a_second_writer(photos, tmp_path, clip_encoder, cli):
    out = tmp_path / "idx"
    _build(photos, out, clip_encoder)
    with index_lock(out, "test holder"):
        with pytest.raises(IndexError_, match="being written by pid .*test holder"):
            update_index(out, embedder=(clip_encoder.encode_images, clip_encoder.dim), progress=False)
        code, _, err = cli("index", "update", out)
        assert code == 1 and "being written" in err and "retry" in err
        # Readers are not blocked.
        assert len(Searcher(out, encoder=clip_encoder).text("a circle", k=2)) == 2
    update_index(out, embedder=(clip_encoder.encode_images, clip_encoder.dim), progress=False)


def test_build_refuses_foreign_folders_and_other_models(photos, tmp_path, clip_encoder, tiny_clip):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "file.txt").write_text("x")
    with pytest.raises(IndexError_, match="not a vlens index"):
        _build(photos, junk, clip_encoder)
    assert not (junk / "lock").exists()
    with pytest.raises(IndexError_, match="not a folder"):
        _build(tmp_path / "missing", tmp_path / "idx", clip_encoder)
    out = tmp_path / "idx"
    _build(photos, out, clip_encoder)
    rep = _build(photos, out, clip_encoder, kind="hnsw")  # a new kind reuses the stored vectors (issue 23 item 2)
    assert rep.embedded == 0 and ImageIndex(out).manifest["kind"] == "hnsw"
    rep = _build(photos, out, clip_encoder, kind="hnsw", force=True)
    assert rep.added == 12 and ImageIndex(out).manifest["kind"] == "hnsw"
    with pytest.raises(ConfigError, match="flat"):
        _build(photos, out, clip_encoder, kind="lsh")
    with pytest.raises(IndexError_, match="no index"):
        ImageIndex(tmp_path / "nowhere")
    with pytest.raises(IndexError_, match="not a vlens index"):
        ImageIndex(junk)


def test_safe_join_refuses_escapes(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.png").write_bytes(b"x")
    (tmp_path / "secret.png").write_bytes(b"x")
    os.symlink(tmp_path / "secret.png", root / "link.png")
    assert safe_join(root, "a.png") == (root / "a.png").resolve()
    for bad in ("../secret.png", "/etc/passwd", "link.png", "", "sub/../../secret.png"):
        assert safe_join(root, bad) is None


def test_link_out_of_root_is_not_indexed(photos, tmp_path, clip_encoder, shapes_dir):
    os.symlink(min((shapes_dir / "images").glob("val_*.png")), photos / "outside.png")
    rep = _build(photos, tmp_path / "idx", clip_encoder)
    assert "outside.png" not in _rows(tmp_path / "idx")
    assert any(p == "outside.png" and "outside" in r for p, r in rep.skipped)


def test_contact_sheet(photos, tmp_path, clip_encoder):
    out = tmp_path / "idx"
    _build(photos, out, clip_encoder)
    s = Searcher(out, encoder=clip_encoder)
    hits = s.text("a green star", k=4)
    png = contact_sheet(hits, s.index.root, tmp_path / "sheet.png", title="a green star",
                        query_image=photos / "test_00000.png")
    im = Image.open(png)
    assert im.format == "PNG" and im.width > 4 * 160


def test_drop_self_by_hand():
    from vlens.retrieval.ann import drop_self

    ids = np.array([[7, 1, 2, 3], [4, 5, 9, 6], [1, 2, 3, 4]])
    out = drop_self(ids, np.array([7, 9, 8]), 3)
    np.testing.assert_array_equal(out, [[1, 2, 3], [4, 5, 6], [1, 2, 3]])
    np.testing.assert_array_equal(drop_self(ids, None, 2), ids[:, :2])


def test_captions_are_stored_and_returned(photos, tmp_path, clip_encoder, tiny_blip):
    few = tmp_path / "few"
    few.mkdir()
    for name in ("test_00001.png", "test_00003.png", "test_00005.png"):
        shutil.copy(photos / name, few / name)
    photos, out = few, tmp_path / "idx"
    rep = _build(photos, out, clip_encoder, captioner=str(tiny_blip))
    assert rep.total == 3
    con = sqlite3.connect(out / "meta.sqlite")
    caps = [c for (c,) in con.execute("SELECT caption FROM images")]
    con.close()
    assert len(caps) == 3 and all(isinstance(c, str) for c in caps)
    from vlens.caption import Captioner, DecodeSettings
    from vlens.images import load_image

    ref = Captioner.from_spec(str(tiny_blip)).caption([load_image(photos / "test_00003.png")], DecodeSettings())
    hit = Searcher(out, encoder=clip_encoder).image(photos / "test_00003.png", k=1)[0]
    assert hit.caption == ref[0][0].text
    assert ImageIndex(out).info()["captioner"] == str(tiny_blip)


def test_open_searcher_follows_a_forced_rebuild(photos, tmp_path, clip_encoder):
    out = tmp_path / "idx"
    _build(photos, out, clip_encoder)
    s = Searcher(out, encoder=clip_encoder)
    assert len(s.text("a circle", k=50)) == 12
    (photos / "test_00000.png").unlink()
    _build(photos, out, clip_encoder, force=True)  # new database file under the open searcher
    hits = s.text("a circle", k=50)
    assert len(hits) == 11 and "test_00000.png" not in {h.path for h in hits}
