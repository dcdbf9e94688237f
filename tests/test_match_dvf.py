"""The 'Deep ViT Features' recipe in vlens match: --bin, saliency, well-spread best-buddy pairs, --preset dvf."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def two_images(tmp_path_factory):
    d = tmp_path_factory.mktemp("dvf-images")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    Image.fromarray(base).save(d / "a.png")
    Image.fromarray(base[8:40, 16:64]).save(d / "b.png")
    return d


def test_match_bin_json_reports_levels_and_dims(cli, tiny_vit, two_images, tmp_path):
    args = ("match", two_images / "a.png", two_images / "b.png", "--model", tiny_vit, "--size", "64",
            "--out", tmp_path / "m.png", "--json")
    code, stdout, err = cli(*args, "--no-bin")
    assert code == 0, err
    plain = json.loads(stdout)
    assert plain["bin_levels"] == 0 and plain["dims"] == 32
    code, stdout, err = cli(*args)  # binned by default since issue 30's measurements
    assert code == 0, err
    assert json.loads(stdout)["bin_levels"] == 2
    code, stdout, err = cli(*args, "--bin")
    assert code == 0, err
    binned = json.loads(stdout)
    assert binned["bin_levels"] == 2 and binned["dims"] == 17 * 32
    code, stdout, err = cli(*args, "--bin", "--bin-levels", "1")
    assert code == 0, err
    assert json.loads(stdout)["dims"] == 9 * 32
    code, stdout, err = cli(*args, "--bin", "--bin-levels", "9")
    assert code != 0 and "--bin-levels" in err and len(err.strip().splitlines()) == 1, err


# ---- well-spread best buddies ---------------------------------------------------------------------------------
def _clustered_pair(seed=0, n=120, d=16, groups=6):
    """Two descriptor sets with ``groups`` clusters; B = A shuffled plus a little noise, plus a few extras."""
    import torch

    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(groups, d, generator=g) * 3
    a = centres[torch.arange(n) % groups] + torch.randn(n, d, generator=g)  # (n, d)
    perm = torch.randperm(n, generator=g)
    b = torch.cat([a[perm] + 0.05 * torch.randn(n, d, generator=g), torch.randn(20, d, generator=g)])  # (n+20, d)
    xy_a = torch.rand(n, 2, generator=g) * 100
    xy_b = torch.rand(n + 20, 2, generator=g) * 100
    return a, b, xy_a, xy_b


def test_spread_pairs_are_mutual_nearest_neighbours_in_distinct_clusters():
    import torch

    from vlens.match.buddies import joined_descriptors, spread_pairs
    from vlens.match.matching import match_descriptors

    a, b, xy_a, xy_b = _clustered_pair()
    m = match_descriptors(a, b, xy_a, xy_b)
    p = spread_pairs(m, a, b, n=6)
    assert len(p) == 6 and p.ranked_by == "cycle" and p.candidates == int(m.mutual.sum())
    d = torch.cdist(a, b)  # brute force, independent of the tiled matcher
    for i, j in zip(p.matches.src_index.tolist(), p.matches.dst_index.tolist()):
        assert int(d[i].argmin()) == j and int(d[:, j].argmin()) == i  # best buddies both ways
    assert len(set(p.cluster.tolist())) == 6  # no two from the same cluster
    # the clusters are k-means clusters of the joined descriptors: refit with the same seed, same partition
    from sklearn.cluster import KMeans

    idx = torch.nonzero(m.mutual).flatten()
    joined = joined_descriptors(a[m.src_index[idx]], b[m.dst_index[idx]]).numpy()
    labels = KMeans(n_clusters=6, random_state=0, n_init=1).fit(joined).labels_
    where = {int(k): pos for pos, k in enumerate(idx.tolist())}
    assert [int(labels[where[int(s)]]) for s in p.matches.src_index] == p.cluster.tolist()
    # each chosen pair is the best-ranked (cycle order) buddy of its cluster: without refinement all mutual pairs
    # have cycle 0, so the smallest feature distance wins
    for c, fd in zip(p.cluster.tolist(), p.matches.feature_distance.tolist()):
        members = [pos for pos, lab in enumerate(labels) if lab == c]
        assert fd == pytest.approx(float(m.feature_distance[idx[members]].min()))
    assert p.matches.feature_distance.tolist() == sorted(p.matches.feature_distance.tolist())  # best first


def test_spread_pairs_rank_by_saliency_and_mask_background():
    import torch

    from vlens.match.buddies import spread_pairs
    from vlens.match.matching import match_descriptors

    a, b, xy_a, xy_b = _clustered_pair(1)
    m = match_descriptors(a, b, xy_a, xy_b)
    sal_a = torch.linspace(0, 1, a.shape[0])
    sal_b = torch.rand(b.shape[0], generator=torch.Generator().manual_seed(3))
    p = spread_pairs(m, a, b, n=5, saliency_a=sal_a, saliency_b=sal_b, threshold=0.3)
    assert p.ranked_by == "saliency" and len(p) == 5 and len(set(p.cluster.tolist())) == 5
    assert bool((p.saliency_src >= 0.3).all() and (p.saliency_dst >= 0.3).all())
    means = ((p.saliency_src + p.saliency_dst) / 2).tolist()
    assert means == sorted(means, reverse=True)
    assert p.candidates == int((m.mutual & (sal_a[m.src_index] >= 0.3) & (sal_b[m.dst_index] >= 0.3)).sum())
    assert all(m.mutual[torch.nonzero(m.src_index == s).flatten()].all() for s in p.matches.src_index)
    few = spread_pairs(m, a, b, n=500)  # more pairs asked than buddies: every buddy, one cluster each
    assert len(few) == few.candidates and len(set(few.cluster.tolist())) == len(few)
    none = spread_pairs(m, a, b, n=5, saliency_a=sal_a, saliency_b=sal_b, threshold=1.01)
    assert len(none) == 0 and none.to_records() == []


# ---- saliency ---------------------------------------------------------------------------------------------------
def test_saliency_equals_the_last_blocks_cls_attention_by_hand(tiny_vit):
    import torch
    import transformers

    from vlens.match.features import _to_tensor, load_backbone
    from vlens.match.saliency import saliency

    rng = np.random.default_rng(5)
    img = Image.fromarray(rng.integers(0, 256, (40, 64, 3), dtype=np.uint8))
    s = saliency(img, str(tiny_vit), size=64)
    bb = load_backbone(str(tiny_vit))
    model = transformers.AutoModel.from_pretrained(tiny_vit, attn_implementation="eager").eval()
    x = _to_tensor(img, 64, 40, bb.mean, bb.std)[None]
    with torch.no_grad():
        att = model(pixel_values=x, output_attentions=True, interpolate_pos_encoding=True).attentions[-1]
    row = att[0, :, 0, 1:].mean(0)  # (patches,) [CLS] -> patches, heads averaged
    want = ((row - row.min()) / (row.max() - row.min())).reshape(5, 8)
    assert s.map.shape == (5, 8) and s.heads == (1, 2) and s.layer == 2
    torch.testing.assert_close(s.map, want, atol=1e-5, rtol=1e-4)
    one = saliency(img, str(tiny_vit), heads=(2,), size=64).map
    r2 = att[0, 1, 0, 1:]
    torch.testing.assert_close(one, ((r2 - r2.min()) / (r2.max() - r2.min())).reshape(5, 8), atol=1e-5, rtol=1e-4)


def test_saliency_helpers_and_models_without_cls(tiny_vit):
    import torch

    from vlens.errors import ConfigError
    from vlens.match.saliency import head_mean, normalize01, saliency_source

    assert normalize01(torch.tensor([2.0, 4.0, 3.0])).tolist() == [0.0, 1.0, 0.5]
    assert normalize01(torch.full((2, 2), 7.0)).tolist() == [[1.0, 1.0], [1.0, 1.0]]  # no evidence: mask nothing
    assert head_mean(torch.tensor([[1.0], [3.0], [8.0]]), (1, 2))[0].tolist() == [2.0]
    with pytest.raises(ConfigError, match="3 heads"):
        head_mean(torch.zeros(3, 1), (4,))
    for spec in ("sift:8", "pixels:8", "sift:8+pixels:8"):
        with pytest.raises(ConfigError, match=r"no \[CLS\] token|no ViT part") as e:
            saliency_source(spec)
        assert "\n" not in str(e.value)
    assert saliency_source(f"{tiny_vit}*0.3+sift:8") == str(tiny_vit)  # a fusion: its ViT part


def test_explore_attention_saliency(cli, tiny_vit, two_images, tmp_path):
    out = tmp_path / "att.png"
    code, stdout, err = cli("explore", "attention", two_images / "a.png", "--model", tiny_vit, "--size", "64",
                            "--saliency", "--out", out, "--json")
    assert code == 0, err
    info = json.loads(stdout)
    assert out.exists() and info["saliency"]["heads"] == [1, 2] and info["saliency"]["grid"] == [5, 8]
    assert info["saliency"]["min"] == 0 and info["saliency"]["max"] == 1
    code, stdout, err = cli("explore", "attention", two_images / "a.png", "--model", "sift:8", "--saliency",
                            "--out", out)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "attention" in err, err


# ---- the CLI ----------------------------------------------------------------------------------------------------
def _match(cli, two_images, tmp_path, *args):
    code, stdout, err = cli("match", two_images / "a.png", two_images / "b.png", "--size", "64",
                            "--out", tmp_path / "m.png", "--json", *args)
    assert code == 0, err
    return json.loads(stdout), err


def test_match_saliency_threshold_keeps_foreground_matches(cli, tiny_vit, two_images, tmp_path):
    info, _ = _match(cli, two_images, tmp_path, "--model", tiny_vit, "--saliency-threshold", "0.5", "--top", "0")
    sal = info["saliency"]
    assert sal["threshold"] == 0.5 and sal["model"] == str(tiny_vit) and sal["heads"] == [1, 2]
    assert 0 < sal["foreground_matches"] == len(info["matches"]) < info["patches"]
    info2, _ = _match(cli, two_images, tmp_path, "--model", tiny_vit, "--pairs", "4", "--saliency-threshold", "0.2")
    rows = info2["matches"]
    assert info2["selection"] == "pairs" and info2["pairs"]["ranked_by"] == "saliency"
    assert 1 <= len(rows) <= 4 and all(r["mutual"] for r in rows)
    assert len({r["cluster"] for r in rows}) == len(rows)
    assert all(r["saliency_src"] >= 0.2 and r["saliency_dst"] >= 0.2 for r in rows)
    # a fusion: its ViT part gives the saliency
    info3, _ = _match(cli, two_images, tmp_path, "--model", f"{tiny_vit}*0.5+sift:8", "--saliency-threshold", "0.1")
    assert info3["saliency"]["model"] == str(tiny_vit)
    code, _, err = cli("match", two_images / "a.png", two_images / "b.png", "--model", "sift:8",
                       "--saliency-threshold", "0.1", "--out", tmp_path / "m.png")
    assert code != 0 and len(err.strip().splitlines()) == 1 and "no [CLS] token" in err, err


def test_match_pairs_without_saliency_rank_by_cycle(cli, two_images, tmp_path):
    info, _ = _match(cli, two_images, tmp_path, "--model", "sift:8", "--pairs", "5")
    rows = info["matches"]
    assert info["pairs"]["ranked_by"] == "cycle" and len(rows) == 5 and all(r["mutual"] for r in rows)
    assert len({r["cluster"] for r in rows}) == 5 and [r["candidate_rank"] for r in rows] == sorted(
        r["candidate_rank"] for r in rows)


def _tiny_dino_checkpoint(path):
    import torch

    from vlens.models import convert_dino

    keys = convert_dino.expected_keys(width=192, depth=2, patch=8, n_patches=16, mlp=384)  # ViT-Tiny width: 3 heads
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(shape, generator=g) * 0.2 + (1 if k.endswith("norm1.weight") or
                                                      k.endswith("norm2.weight") or k == "norm.weight" else 0)
          for k, shape in keys.items()}
    torch.save(sd, path)  # the torch.hub layout (dino_deitsmall8_pretrain.pth)
    return path


@pytest.mark.parametrize("which", ["builtin", "checkpoint"])
def test_preset_dvf_runs_offline(cli, two_images, tmp_path, which):
    spec = "builtin:dino-tiny" if which == "builtin" else _tiny_dino_checkpoint(tmp_path / "dino_deitsmall8.pth")
    info, err = _match(cli, two_images, tmp_path, "--model", spec, "--preset", "dvf")
    assert info["preset"] == "dvf" and info["facet"] == "key" and info["bin_levels"] == 2 and info["stride"] == 4
    assert info["layer"] == (3 if which == "builtin" else 2)  # 9 of 12 scaled: 4 blocks -> 3, 2 blocks -> 2
    assert info["saliency"]["threshold"] == 0.05 and info["selection"] == "pairs"
    assert info["pairs"]["asked"] == 10 and 1 <= len(info["matches"]) <= 10
    assert "scaled to this depth" in err
    assert (tmp_path / "m.png").exists()
    # options given explicitly win over the preset
    info, _ = _match(cli, two_images, tmp_path, "--model", spec, "--preset", "dvf", "--layer", "1", "--pairs", "3",
                     "--no-bin")
    assert info["layer"] == 1 and info["pairs"]["asked"] == 3 and info["bin_levels"] == 0 and info["facet"] == "key"
    assert info["stride"] == 4


def test_recipe_scaling():
    from vlens.match.recipes import recipe_stride, scaled_layer

    assert [scaled_layer(n, 9 / 12) for n in (12, 4, 2, 1, 24)] == [9, 3, 2, 1, 18]
    assert recipe_stride([8]) == 4 and recipe_stride([16]) == 4 and recipe_stride([8, 8]) == 4
    assert recipe_stride([14]) == 7 and recipe_stride([14, 8]) == 2 and recipe_stride([1]) == 1


def test_library_find_pairs_and_saliency_threshold(tiny_vit, two_images):
    from vlens.match import find_pairs, match_images

    p = find_pairs(two_images / "a.png", two_images / "b.png", str(tiny_vit), preset="dvf", size=64, n=4)
    assert p.ranked_by == "saliency" and 1 <= len(p) <= 4 and bool(p.matches.mutual.all())
    assert len(set(p.cluster.tolist())) == len(p) and bool((p.saliency_src >= 0.05).all())
    plain = find_pairs(two_images / "a.png", two_images / "b.png", "sift:8", size=64, n=3)
    assert plain.ranked_by == "cycle" and len(plain) == 3
    m_all = match_images(two_images / "a.png", two_images / "b.png", str(tiny_vit), top=None, size=64)
    m_fg = match_images(two_images / "a.png", two_images / "b.png", str(tiny_vit), top=None, size=64,
                        saliency_threshold=0.5)
    assert 0 < len(m_fg) < len(m_all)


def test_recipe_for_descriptors_without_a_model(tiny_vit):
    from vlens.match.recipes import recipe

    settings, notes = recipe("dvf", "sift:8")
    assert settings["facet"] == "token" and settings["saliency_threshold"] == 0 and settings["stride"] == 4
    assert any("no model" in n for n in notes)
    settings, notes = recipe("dvf", f"{tiny_vit}*0.2+sift:8*0.8")
    assert settings["facet"] == "key" and settings["layer"] == 2 and settings["saliency_threshold"] == 0.05
    assert any("ViT part" in n for n in notes)
