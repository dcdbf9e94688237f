"""Real pairs with ground truth: metrics by hand, pixel conventions, loaders and their bad inputs, dense and
sparse SIFT, the runner on an exact synthetic homography pair, and the real OpenCV pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vlens.errors import DatasetError
from vlens.match import geometry as G
from vlens.match import pairs as P


def _texture(w: int = 128, h: int = 96, seed: int = 0) -> Image.Image:
    """A real photo crop (scikit-image's astronaut): textured enough for every descriptor."""
    from vlens.data.photos import load_photo

    rng = np.random.default_rng(seed)
    img = load_photo("astronaut")
    x, y = rng.integers(0, 200), rng.integers(0, 200)
    return img.crop((x, y, x + w, y + h))


def _warp(img: Image.Image, h_cv: np.ndarray) -> Image.Image:
    import cv2

    arr = cv2.warpPerspective(np.asarray(img), h_cv, img.size, flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT)
    return Image.fromarray(arr)


# ------------------------------------------------------------------------------------------------ metrics


def test_mma_pck_and_top_fraction_by_hand():
    errors = np.array([0.5, 1.0, 2.5, 7.0, 12.0, 30.0])
    # t=1: 0.5, 1.0 -> 2/6; t=2: 2/6; t=3: 3/6; t=4..6: 3/6; t=7..10: 4/6
    assert P.mma_curve(errors) == pytest.approx([2 / 6, 2 / 6, 3 / 6, 3 / 6, 3 / 6, 3 / 6, 4 / 6, 4 / 6, 4 / 6,
                                                 4 / 6])
    assert P.pck(errors) == pytest.approx({"pck@1": 2 / 6, "pck@3": 3 / 6, "pck@5": 3 / 6, "pck@10": 4 / 6,
                                           "pck@20": 5 / 6})
    assert list(P.top_fraction(errors, 0.1)) == [0.5]  # ceil(0.6) = 1
    assert list(P.top_fraction(errors, 0.5)) == [0.5, 1.0, 2.5]
    st = P.subset_stats(errors)
    assert st["median"] == pytest.approx(4.75) and st["n"] == 6
    assert P.mma_curve(np.zeros(0)) == [0.0] * 10


def test_corner_error_by_hand():
    shift = np.array([[1.0, 0, 3], [0, 1, 4], [0, 0, 1]])
    assert P.corner_error(shift, np.eye(3), (10, 10)) == pytest.approx(5.0)
    assert P.corner_error(None, np.eye(3), (10, 10)) == float("inf")


# ---------------------------------------------------------------------------------------------- conventions


def test_opencv_homography_convention_with_a_warped_blob():
    """cv2.warpPerspective with H (OpenCV convention) moves a blob centred at vlens point p to
    homography_from_opencv(H)(p), not to H(p)."""
    w = h = 64
    ys, xs = np.mgrid[0:h, 0:w] + 0.5  # vlens pixel centres
    cx, cy = 10.5, 12.0
    blob = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * 1.5 ** 2))
    h_cv = np.array([[2.0, 0, 3], [0, 2.0, 1], [0, 0, 1]])
    import cv2

    warped = cv2.warpPerspective(blob.astype(np.float32), h_cv, (w, h), flags=cv2.INTER_LINEAR)
    centroid = np.array([(warped * xs).sum(), (warped * ys).sum()]) / warped.sum()
    expected = G.apply_homography(G.homography_from_opencv(h_cv), [[cx, cy]])[0]
    naive = G.apply_homography(h_cv, [[cx, cy]])[0]
    assert np.linalg.norm(centroid - expected) < 0.05
    assert np.linalg.norm(naive - expected) == pytest.approx(np.hypot(0.5, 0.5))  # what ignoring it costs
    assert np.allclose(G.homography_to_opencv(G.homography_from_opencv(h_cv)), h_cv)


def test_sift_coordinates_are_vlens_coordinates():
    from vlens.match.geometry import from_opencv_xy, to_opencv_xy

    assert np.allclose(to_opencv_xy([[0.5, 1.5]]), [[0.0, 1.0]])
    assert np.allclose(from_opencv_xy(to_opencv_xy([[3.25, 7.0]])), [[3.25, 7.0]])


# ------------------------------------------------------------------------------------------------ dense SIFT


def test_dense_sift_is_deterministic_and_sits_on_the_patch_centres():
    import cv2

    from vlens.match import extract_features
    from vlens.match.sift import dense_sift, gray_uint8

    img = _texture(96, 64)
    a = extract_features([img], "sift:8", size=96)[0]
    b = extract_features([img], "sift:8", size=96)[0]
    assert a.descriptors.shape == (8, 12, 128) and a.grid == (8, 12)
    assert np.array_equal(a.descriptors.numpy(), b.descriptors.numpy())
    assert np.allclose(a.centers[13].numpy(), [(1 + 0.5) * 8, (1 + 0.5) * 8])  # row 1, col 1
    # patch (i=2, j=5) equals OpenCV's descriptor of one keypoint at its centre in OpenCV coordinates
    g = gray_uint8(img)
    kp = cv2.KeyPoint(5.5 * 8 - 0.5, 2.5 * 8 - 0.5, 48 / 6, 0.0)
    _, one = cv2.SIFT_create().compute(g, [kp])
    assert np.allclose(dense_sift(g, 8)[2, 5], one[0])


def test_sift_spec_errors(cli):
    from vlens.errors import ConfigError
    from vlens.match import extract_features, load_backbone

    with pytest.raises(ConfigError, match="sift:P"):
        load_backbone("sift:x")
    with pytest.raises(ConfigError, match="no attention facets"):
        extract_features([_texture()], "sift:8", facet="key")
    assert load_backbone("sift:8:32").support == 32.0


# --------------------------------------------------------------------------------------- synthetic exact pair


def _write_pair(tmp_path, h_cv, name="p"):
    src = _texture()
    src.save(tmp_path / f"{name}_a.png")
    _warp(src, h_cv).save(tmp_path / f"{name}_b.png")
    return {"name": name, "source": f"{name}_a.png", "target": f"{name}_b.png", "homography": h_cv.tolist()}


def test_exact_homography_pair_identity_like_descriptor_scores_near_perfect(tmp_path):
    """A grid-aligned shift: raw pixel patches (identity-like) find every patch exactly; a mild projective warp:
    dense SIFT stays within 10 px for most patches and RANSAC recovers the homography."""
    shift = np.array([[1.0, 0, 16], [0, 1.0, 8], [0, 0, 1]])
    mild = np.array([[1.02, 0.03, 4.0], [-0.02, 0.99, 3.0], [1e-5, 2e-5, 1]])
    (tmp_path / "m.json").write_text(json.dumps({"pairs": [_write_pair(tmp_path, shift, "shift"),
                                                           _write_pair(tmp_path, mild, "mild")]}))
    pairs = P.load_manifest(tmp_path / "m.json")
    res = P.run_pairs_benchmark(["pixels:8", "sift:8"], pairs, P.PairsConfig(size=128))
    by = {(r.pair, d.descriptor): d for r in res for d in r.descriptors}
    exact = by[("shift", "pixels:8")]
    assert exact.skipped_outside == 2 * 12 + 16 - 2  # the right two columns and the bottom row leave the target
    assert exact.all["pck@5"] > 0.95 and exact.all["median"] == pytest.approx(0.0, abs=1e-4)
    assert exact.corner_error < 0.5
    assert by[("mild", "sift:8")].all["pck@10"] > 0.8
    assert by[("mild", "sift:8")].corner_error < 3.0
    assert res[1].sparse_sift["corner_error"] < 3.0


# --------------------------------------------------------------------------------------------------- loaders


def _hpatches_seq(root, name="v_test", missing=None):
    seq = root / name
    seq.mkdir(parents=True)
    src = _texture(64, 48)
    src.save(seq / "1.ppm")
    for k in range(2, 7):
        h = np.array([[1.0, 0, k], [0, 1.0, 0], [0, 0, 1]])
        if f"{k}.ppm" != missing:
            _warp(src, h).save(seq / f"{k}.ppm")
        np.savetxt(seq / f"H_1_{k}", h)
    return seq


def test_hpatches_layout(tmp_path):
    _hpatches_seq(tmp_path / "hp", "v_a")
    _hpatches_seq(tmp_path / "hp", "i_b")
    pairs = P.load_hpatches(tmp_path / "hp")
    assert [p.name for p in pairs][:2] == ["i_b/1-2", "i_b/1-3"] and len(pairs) == 10
    assert {p.group for p in pairs} == {"hpatches-illumination", "hpatches-viewpoint"}  # the tables' sets
    one = P.load_hpatches(tmp_path / "hp" / "v_a")
    assert len(one) == 5 and one[0].kind == "homography"
    # OpenCV convention converted: a pure translation is the same in both conventions
    assert np.allclose(one[3].homography, [[1, 0, 5], [0, 1, 0], [0, 0, 1]])
    assert [p.name for p in P.load_hpatches(tmp_path / "hp", ["v_a"])][0] == "v_a/1-2"
    with pytest.raises(DatasetError, match="no sequence v_x"):
        P.load_hpatches(tmp_path / "hp", ["v_x"])


def test_hpatches_missing_image_is_one_line(tmp_path):
    seq = _hpatches_seq(tmp_path, "v_bad", missing="4.ppm")
    with pytest.raises(DatasetError, match=r"missing 4.ppm") as e:
        P.load_hpatches(seq)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("content,match", [("1 0 0\n0 1 0", "3x3, got 6 numbers"),
                                           ("1 2 3\n2 4 6\n0 0 1", "singular"),
                                           ("1 0 x\n0 1 0\n0 0 1", "expected 9 numbers")])
def test_bad_homography_files(tmp_path, content, match):
    (tmp_path / "H").write_text(content)
    with pytest.raises(DatasetError, match=match):
        G.read_homography(tmp_path / "H")


def test_manifest_disparity_and_bad_inputs(tmp_path):
    src = _texture(64, 48)
    src.save(tmp_path / "L.png")
    src.save(tmp_path / "R.png")
    d = np.full((48, 64), 8, np.uint8)  # disparity 4 at scale 2
    d[:, :10] = 0  # unknown
    Image.fromarray(d).save(tmp_path / "D.png")
    Image.fromarray(d[:40]).save(tmp_path / "D_small.png")
    entry = {"name": "st", "source": "L.png", "target": "R.png", "disparity": "D.png", "disparity_scale": 2}
    (tmp_path / "m.json").write_text(json.dumps({"pairs": [entry]}))
    (pair,) = P.load_manifest(tmp_path / "m.json")
    t = pair.truth(np.array([[20.5, 5.5], [3.5, 5.5]]))
    assert np.allclose(t[0], [16.5, 5.5]) and np.isnan(t[1]).all()

    def bad(**change):
        (tmp_path / "bad.json").write_text(json.dumps({"pairs": [{**entry, **change}]}))
        with pytest.raises(DatasetError) as e:
            P.load_manifest(tmp_path / "bad.json")
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "64x40" in bad(disparity="D_small.png") and "same size" in bad(disparity="D_small.png")
    assert "does not exist" in bad(target="nope.png")
    assert "3x3" in bad(disparity=None, homography=[[1, 0], [0, 1]]).replace("exactly one", "3x3")
    assert "singular" in bad(homography=[[1, 2, 3], [2, 4, 6], [0, 0, 1]], disparity=None)
    with pytest.raises(DatasetError, match="not valid JSON"):
        (tmp_path / "x.json").write_text("{")
        P.load_manifest(tmp_path / "x.json")


def test_ground_truth_outside_the_target_is_one_line(tmp_path):
    far = np.array([[1.0, 0, 5000], [0, 1.0, 0], [0, 0, 1]])
    (tmp_path / "m.json").write_text(json.dumps({"pairs": [_write_pair(tmp_path, np.eye(3), "far")]}))
    (pair,) = P.load_manifest(tmp_path / "m.json")
    pair = P.make_pair("far", pair.source, pair.target, homography=far)
    with pytest.raises(DatasetError, match="maps every source patch outside the target"):
        P.run_pairs_benchmark(["pixels:8"], [pair], P.PairsConfig(size=128))


def test_bench_pairs_cli(cli, tmp_path, tiny_vit):
    shift = np.array([[1.0, 0, 8], [0, 1.0, 8], [0, 0, 1]])
    (tmp_path / "m.json").write_text(json.dumps({"pairs": [_write_pair(tmp_path, shift)]}))
    code, out, err = cli("bench", "pairs", "--data", tmp_path / "m.json", "--model", tiny_vit, "--size", "128",
                         "--out", tmp_path / "run", "--json")
    assert code == 0, err
    body = json.loads(out)
    descs = body["pairs"][0]["descriptors"]
    assert [d["descriptor"] for d in descs[::2]] == [str(tiny_vit), "sift:8", "pixels:8", f"random:{tiny_vit}"]
    assert [d["refine"] for d in descs[:2]] == ["none", "quadratic"]  # each descriptor without and with refinement
    assert body["pairs"][0]["sparse_sift"]["corner_error"] < 5
    for f in ("results.json", "table.md", "table.csv", "summary.csv", "mma.png"):
        assert (tmp_path / "run" / f).is_file()
    code, out, err = cli("bench", "pairs", "--data", tmp_path / "missing.json", "--out", tmp_path / "r2")
    assert code != 0 and err.strip().startswith("error:") and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------ real OpenCV pairs


@pytest.mark.slow
def test_real_pairs_conventions_and_sparse_sift(opencv_samples):
    """graffiti: the sparse SIFT pipeline recovers the shipped homography to a few px at 448 px (only with the
    +0.5 conversion does the fit reach ~1 px); aloe: disparities at scale 1, 0 = unknown."""
    from vlens.match.sift import sparse_sift_matches

    graf, aloe = P.opencv_pairs()
    assert graf.kind == "homography" and aloe.kind == "disparity"
    assert np.isnan(aloe.disparity).mean() > 0.01 and np.nanmax(aloe.disparity) < 255
    from vlens.images import load_image

    a, b = load_image(graf.source), load_image(graf.target)
    xa, xb, _, _ = sparse_sift_matches(a, b)
    err_v = np.linalg.norm(G.apply_homography(graf.homography, xa) - xb, axis=1)
    err_naive = np.linalg.norm(G.apply_homography(G.homography_to_opencv(graf.homography), xa) - xb, axis=1)
    good = err_v < 3
    assert good.mean() > 0.5
    assert np.median(err_v[good]) < np.median(err_naive[good])  # the convention matters and is the right one
    res = P.run_pairs_benchmark(["sift:8"], [graf, aloe], P.PairsConfig())
    assert res[0].sparse_sift["corner_error"] < 5.0
    assert res[1].descriptors[0].skipped_unknown > 0


def _fake(group, pck10, corner, refine="none"):
    stats = {"n": 4, "median": 2 * pck10, "mean": 1.0, "mma": [pck10] * 10,
             **{f"pck@{t}": pck10 for t in P.PCK_THRESHOLDS}}
    d = P.DescriptorResult("sift:8", 4, 0, 0, stats, {"cycle@50%": {"pck@10": pck10}}, corner_error=corner,
                           refine=refine)
    return P.PairResult(f"{group}/{pck10}", "homography", ((8, 8), (8, 8)), [d],
                        {"evaluated": 3, "all": stats, "corner_error": corner}, group)


def test_summary_is_the_mean_over_a_sets_pairs():
    res = [_fake("s", 0.2, 1.0, "soft"), _fake("s", 0.6, 5.0, "soft"), _fake("s", 0.7, float("inf"), "soft"),
           _fake("t", 0.5, None, "soft")]
    sm = P.summarize(res)
    assert [(x["set"], x["pairs"]) for x in sm] == [("s", 3), ("t", 1)]
    r = sm[0]["descriptors"][0]
    assert r["label"] == "sift:8 + soft" and r["matches"] == 12
    assert r["pck@10"] == pytest.approx(0.5) and r["mma"] == pytest.approx([0.5] * 10)
    assert r["median"] == pytest.approx(1.0) and r["top50_cycle_pck@10"] == pytest.approx(0.5)
    assert r["corner_error"] == 5.0  # the median over pairs (a failed fit counts as infinite)
    assert sm[1]["descriptors"][0]["corner_error"] is None and sm[0]["sparse_sift"]["matches"] == 9
    rows = P.summary_rows(sm)
    assert rows[0][:3] == ["s", 3, "sift:8 + soft"] and rows[0][P.SUMMARY_HEADERS.index("PCK@10")] == 50.0


def test_synthetic_homography_is_seeded_and_keeps_the_photo_in_view():
    h1 = P.synthetic_homography((640, 480), np.random.default_rng([0, 3]))
    h2 = P.synthetic_homography((640, 480), np.random.default_rng([0, 3]))
    assert np.array_equal(h1, h2)
    corners = np.array([[0, 0], [639, 0], [639, 479], [0, 479]], dtype=float)
    moved = G.apply_homography(h1, corners)
    centre = G.apply_homography(h1, np.array([[319.5, 239.5]]))[0]
    assert np.abs(centre - [319.5, 239.5]).max() < 0.1 * 640 + 1  # the centre moves by at most the jitter
    assert (np.linalg.norm(moved - corners, axis=1) > 1).all()  # every corner moves


@pytest.mark.slow
def test_heldout_pairs_ground_truth_is_photometrically_right(opencv_samples):
    """The warped target shows the source pixel p at H(p): compare colours through the ground truth."""
    from vlens.data.opencv_samples import HELDOUT_PHOTOS
    from vlens.images import load_image

    (pair,) = P.heldout_pairs(names=[HELDOUT_PHOTOS[1]])
    assert pair.group == "opencv:heldout" and pair.target.is_file()
    again = P.heldout_pairs(names=[HELDOUT_PHOTOS[1]])[0]  # cached, same truth
    assert np.array_equal(again.homography, pair.homography)
    a, b = (np.asarray(load_image(p), dtype=np.float64) for p in (pair.source, pair.target))
    rng = np.random.default_rng(0)
    xy = rng.uniform([20, 20], [a.shape[1] - 20, a.shape[0] - 20], (400, 2))
    t = pair.truth(xy)
    inside = (t[:, 0] > 1) & (t[:, 1] > 1) & (t[:, 0] < b.shape[1] - 2) & (t[:, 1] < b.shape[0] - 2)
    src = a[np.floor(xy[inside, 1]).astype(int), np.floor(xy[inside, 0]).astype(int)]
    good = b[np.floor(t[inside, 1]).astype(int), np.floor(t[inside, 0]).astype(int)]
    bad = b[np.floor(t[inside, 1] + 6).astype(int).clip(0, b.shape[0] - 1),
            np.floor(t[inside, 0] + 6).astype(int).clip(0, b.shape[1] - 1)]
    assert inside.sum() > 200
    assert np.abs(src - good).mean() < 0.5 * np.abs(src - bad).mean()
