"""`vlens index dupes`: the perceptual hash by hand, and exact plus resized/re-encoded copies found in a real index."""

from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image

from vlens.retrieval.dupes import dhash, hamming


def test_dhash_by_hand():
    # 9 x 8 grey image: row r is brighter on the left in columns where (r + c) is even, so bit (r, c) = (r+c) even
    px = np.zeros((8, 9), np.uint8)
    for r in range(8):
        level = 200
        for c in range(9):
            px[r, c] = level
            if c < 8:
                level = level - 50 if (r + c) % 2 == 0 else level + 50
    want = int("".join("1" if (r + c) % 2 == 0 else "0" for r in range(8) for c in range(8)), 2)
    assert dhash(Image.fromarray(px)) == want
    assert dhash(Image.fromarray(px).resize((90, 80), Image.Resampling.NEAREST)) == want  # scale-free
    assert hamming(want, want ^ 0b1011) == 3 and hamming(0, (1 << 64) - 1) == 64


def test_dupes_finds_exact_and_resized_reencoded_copies(tiny_clip, tmp_path, cli, shapes_folder):
    root = shapes_folder(tmp_path / "photos")
    shutil.copy(root / "test_00001.png", root / "copy of 1.png")                      # exact copy
    orig = Image.open(root / "test_00004.png").convert("RGB")
    orig.resize((48, 48), Image.Resampling.LANCZOS).save(root / "small 4.jpg", quality=80)  # resized, re-encoded
    idx = tmp_path / "idx"
    code, out, err = cli("index", "build", root, "--out", idx, "--model", tiny_clip, "--json")
    assert code == 0, err
    code, out, err = cli("index", "dupes", idx, "--json", "--out", tmp_path / "sheets")
    assert code == 0, err
    res = json.loads(out)
    groups = {tuple(im["path"] for im in g["images"]): g for g in res["groups"]}
    assert set(groups) == {("copy of 1.png", "test_00001.png"), ("test_00004.png", "small 4.jpg")}, groups
    exact = groups[("copy of 1.png", "test_00001.png")]
    assert exact["kind"] == "exact" and exact["images"][1]["similarity"] == 1.0
    near = groups[("test_00004.png", "small 4.jpg")]
    assert near["kind"] == "near" and near["images"][1]["similarity"] >= 0.95 and near["images"][1]["bits"] <= 10
    for g in res["groups"]:
        assert Image.open(g["sheet"]).format == "PNG"
    code, out, _ = cli("index", "dupes", idx)
    assert code == 0 and out.startswith("2 group(s) of duplicates among 14 images (1 exact, 1 near)")
    assert "keep  test_00004.png" in out
    # a strict threshold keeps the exact copy only; no perceptual slack drops the re-encoded copy too
    res = json.loads(cli("index", "dupes", idx, "--threshold", "1", "--json")[1])
    assert [g["kind"] for g in res["groups"]] == ["exact"]
    res = json.loads(cli("index", "dupes", idx, "--max-bits", "0", "--json")[1])
    assert all(g["kind"] == "exact" for g in res["groups"]) or near["images"][1]["bits"] == 0
