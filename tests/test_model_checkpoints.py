"""Checkpoints users already hold: torch.hub DINO, timm ``vit_small_patch8_224.dino``, DINOv2 (plain and with
registers) and open_clip ViT-B-32 state dicts -> the Hugging Face classes vlens uses.

``tests/data/checkpoint_layouts/*.json`` keep the real key names and shapes of each supported checkpoint (read from
the projects' sources; timm and open_clip cannot be imported here). The converters must accept exactly those
layouts (checked at full size with meta tensors: nothing allocated) and refuse near misses in one line. Then a
checkpoint in each layout with random weights and tiny sizes, same key names, is written to disk, loaded with
``vlens.models.load(PATH)`` and compared with a hand-written forward pass over the raw state dict, written from the
original projects' code (pre-norm blocks, fused qkv rows q/k/v, LayerScale, class-token pooling, argmax pooling of
the text tower)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vlens.errors import ModelLoadError
from vlens.models import checkpoints, convert_dino, convert_dinov2, convert_open_clip

LAYOUTS = Path(__file__).parent / "data" / "checkpoint_layouts"
FAMILY_OF_FIXTURE = {"dino_deitsmall8_pretrain": "dino", "timm_vit_small_patch8_224.dino": "dino",
                     "dinov2_vits14_pretrain": "dinov2", "dinov2_vits14_reg4_pretrain": "dinov2",
                     "timm_vit_small_patch14_dinov2": "dinov2", "timm_vit_small_patch14_reg4_dinov2": "dinov2",
                     "open_clip_ViT-B-32": "open_clip"}


def fixture(name: str) -> dict[str, tuple]:
    return {k: tuple(v) for k, v in json.loads((LAYOUTS / f"{name}.json").read_text())["keys"].items()}


def meta_sd(keys: dict[str, tuple]) -> dict:
    return {k: torch.empty(shape, device="meta") for k, shape in keys.items()}


def random_sd(keys: dict[str, tuple], seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in keys.items():
        t = torch.randn(shape, generator=g) * 0.2
        if k.endswith(("norm1.weight", "norm2.weight", "norm.weight", "ln_1.weight", "ln_2.weight", "ln_pre.weight",
                       "ln_post.weight", "ln_final.weight")):
            t = 1 + t  # LayerNorm gains near 1, like trained ones
        sd[k] = t
    return sd


# ---- the layouts, at full size --------------------------------------------------------------------------------

def test_fixtures_are_the_layouts_the_converters_write_down():
    assert set(FAMILY_OF_FIXTURE) == {p.stem for p in LAYOUTS.glob("*.json")}
    assert fixture("dino_deitsmall8_pretrain") == convert_dino.expected_keys(384, 12, 8, 784, 1536)
    assert fixture("timm_vit_small_patch8_224.dino") == fixture("dino_deitsmall8_pretrain")
    assert fixture("dinov2_vits14_pretrain") == convert_dinov2.expected_keys(384, 12, 14, 1369, 1536, 0)
    assert fixture("dinov2_vits14_reg4_pretrain")["register_tokens"] == (1, 4, 384)
    assert fixture("timm_vit_small_patch14_reg4_dinov2") == convert_dinov2.expected_keys(
        384, 12, 14, 1369, 1536, 4, timm=True, cls_pos=False)
    assert fixture("timm_vit_small_patch14_dinov2") == convert_dinov2.expected_keys(384, 12, 14, 1369, 1536, 0,
                                                                                      timm=True)
    assert len(fixture("open_clip_ViT-B-32")) == 14 + 24 * 12


@pytest.mark.parametrize("name", sorted(FAMILY_OF_FIXTURE))
def test_real_layouts_are_recognised_and_converted_at_full_size(name):
    sd = meta_sd(fixture(name))
    family, config, out, _ = checkpoints.convert_state_dict(sd)
    assert family == FAMILY_OF_FIXTURE[name]
    if family == "dino":  # facebook/dino-vits8's config
        assert {k: config[k] for k in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                       "intermediate_size", "patch_size", "image_size", "layer_norm_eps")} == {
            "model_type": "vit", "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6,
            "intermediate_size": 1536, "patch_size": 8, "image_size": 224, "layer_norm_eps": 1e-6}
        assert len(out) == 6 + 12 * 16
    elif family == "dinov2":  # facebook/dinov2-small's
        assert (config["hidden_size"], config["num_attention_heads"], config["patch_size"], config["image_size"],
                config["mlp_ratio"]) == (384, 6, 14, 518, 4)
        assert config["model_type"] == ("dinov2_with_registers" if "reg4" in name else "dinov2")
        assert out["embeddings.position_embeddings"].shape == (1, 1370, 384)
        assert config["pos_embed_interpolation"] == ("exact-antialias" if name.startswith("timm") else "offset")
    else:  # openai/clip-vit-base-patch32's shapes
        v, t = config["vision_config"], config["text_config"]
        assert (v["hidden_size"], v["num_attention_heads"], v["patch_size"], v["image_size"]) == (768, 12, 32, 224)
        assert (t["hidden_size"], t["num_attention_heads"], t["max_position_embeddings"], t["vocab_size"]) == \
            (512, 8, 77, 49408)
        assert config["projection_dim"] == 512 and out["visual_projection.weight"].shape == (512, 768)


@pytest.mark.parametrize("name", sorted(FAMILY_OF_FIXTURE))
def test_near_misses_are_refused_in_one_line(name):
    keys = fixture(name)
    first_block = next(k for k in keys if ".0." in k)
    cases = {
        "missing": {k: v for k, v in keys.items() if k != first_block},
        "unexpected": {**keys, "blocks.0.attn.rel_pos_bias": (6, 6)},
        "shape": {k: ((v[0] + 1,) + v[1:] if k == first_block and v else v) for k, v in keys.items()},
    }
    for what, bad in cases.items():
        with pytest.raises(ModelLoadError) as err:
            checkpoints.convert_state_dict(meta_sd(bad))
        msg = str(err.value)
        assert "\n" not in msg and ("not a " in msg or "unknown checkpoint layout" in msg), (what, msg)


def test_unknown_layout_names_what_was_expected():
    with pytest.raises(ModelLoadError) as err:
        checkpoints.convert_state_dict({"conv1.weight": torch.zeros(2, 3, 3, 3), "fc.weight": torch.zeros(2, 2)})
    msg = str(err.value)
    assert msg.startswith("unknown checkpoint layout (keys conv1.weight, fc.weight)") and "\n" not in msg
    for layout in ("torch.hub DINO", "DINOv2", "open_clip"):
        assert layout in msg


def test_a_converter_refuses_another_familys_layout():
    with pytest.raises(ModelLoadError, match="not a torch.hub DINO"):
        convert_dino.convert(meta_sd(fixture("dinov2_vits14_pretrain")))
    with pytest.raises(ModelLoadError, match="DINOv2 checkpoint with a SwiGLU"):
        convert_dinov2.convert(meta_sd({**fixture("dinov2_vits14_pretrain"), "blocks.0.mlp.w12.weight": (3072, 384)}))


# ---- reference forwards, over the raw state dicts -------------------------------------------------------------

def _ln(x, sd, p, eps):
    return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps)


def _attention(x, w_qkv, b_qkv, w_o, b_o, heads, mask=None):
    b, n, d = x.shape
    qkv = (x @ w_qkv.T + b_qkv).reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    a = (q @ k.transpose(-2, -1)) * (d // heads) ** -0.5
    if mask is not None:
        a = a + mask
    y = (a.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
    return y @ w_o.T + b_o


def vit_reference(sd, x, heads, layerscale=False):
    """DINO / timm / DINOv2 ``forward_features`` with the final norm, all tokens."""
    w = sd["patch_embed.proj.weight"]
    t = F.conv2d(x, w, sd["patch_embed.proj.bias"], stride=w.shape[-1]).flatten(2).transpose(1, 2)
    if sd["pos_embed"].shape[1] == t.shape[1]:  # timm's no_embed_class: no class position
        t = torch.cat([sd["cls_token"].expand(len(x), -1, -1), t + sd["pos_embed"]], 1)
    else:
        t = torch.cat([sd["cls_token"].expand(len(x), -1, -1), t], 1) + sd["pos_embed"]
    regs = sd.get("register_tokens", sd.get("reg_token"))
    if regs is not None:
        t = torch.cat([t[:, :1], regs.expand(len(x), -1, -1), t[:, 1:]], 1)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        b = f"blocks.{i}."
        y = _attention(_ln(t, sd, b + "norm1", 1e-6), sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"],
                       sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"], heads)
        t = t + (y * sd[b + "ls1.gamma"] if layerscale else y)
        h = _ln(t, sd, b + "norm2", 1e-6)
        y = F.gelu(h @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"]) @ sd[b + "mlp.fc2.weight"].T \
            + sd[b + "mlp.fc2.bias"]
        t = t + (y * sd[b + "ls2.gamma"] if layerscale else y)
    return _ln(t, sd, "norm", 1e-6)


def _resblocks(sd, prefix, t, heads, act, mask=None):
    i = 0
    while f"{prefix}{i}.ln_1.weight" in sd:
        b = f"{prefix}{i}."
        t = t + _attention(_ln(t, sd, b + "ln_1", 1e-5), sd[b + "attn.in_proj_weight"], sd[b + "attn.in_proj_bias"],
                           sd[b + "attn.out_proj.weight"], sd[b + "attn.out_proj.bias"], heads, mask)
        h = _ln(t, sd, b + "ln_2", 1e-5) @ sd[b + "mlp.c_fc.weight"].T + sd[b + "mlp.c_fc.bias"]
        t = t + act(h) @ sd[b + "mlp.c_proj.weight"].T + sd[b + "mlp.c_proj.bias"]
        i += 1
    return t


def clip_reference(sd, pixels, ids, vision_heads, text_heads, quick_gelu):
    """open_clip ``encode_image`` / ``encode_text`` (unnormalised)."""
    act = (lambda z: z * torch.sigmoid(1.702 * z)) if quick_gelu else F.gelu
    w = sd["visual.conv1.weight"]
    t = F.conv2d(pixels, w, stride=w.shape[-1]).flatten(2).transpose(1, 2)
    t = torch.cat([sd["visual.class_embedding"].expand(len(pixels), 1, -1), t], 1) + sd["visual.positional_embedding"]
    t = _resblocks(sd, "visual.transformer.resblocks.", _ln(t, sd, "visual.ln_pre", 1e-5), vision_heads, act)
    image = _ln(t[:, 0], sd, "visual.ln_post", 1e-5) @ sd["visual.proj"]
    n = ids.shape[1]
    t = sd["token_embedding.weight"][ids] + sd["positional_embedding"][:n]
    causal = torch.full((n, n), float("-inf")).triu(1)
    t = _ln(_resblocks(sd, "transformer.resblocks.", t, text_heads, act, causal), sd, "ln_final", 1e-5)
    text = t[torch.arange(len(ids)), ids.argmax(-1)] @ sd["text_projection"]
    return image, text


# ---- tiny checkpoints on disk, loaded by vlens, equal outputs -------------------------------------------------

def _save(sd, path: Path, wrap=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(wrap(sd) if wrap else sd, path)
    return path


@pytest.mark.parametrize("name, wrap", [
    ("dino_deitsmall8_pretrain.pth", None),
    ("vit_small_patch8_224.dino.safetensors", None),  # timm's hub file
    ("dino_deitsmall8_full_checkpoint.pth",  # a DINO training checkpoint: teacher, module.backbone., DINO head
     lambda sd: {"teacher": {**{"module.backbone." + k: v for k, v in sd.items()},
                             "module.head.last_layer.weight_g": torch.ones(7, 1)}, "epoch": 3}),
])
def test_dino_and_timm_checkpoints_load_to_equal_outputs(tmp_path, name, wrap):
    from vlens.models import load

    torch.manual_seed(0)
    sd = random_sd(convert_dino.expected_keys(width=384, depth=2, patch=4, n_patches=16, mlp=256))  # ViT-S: 6 heads
    path = _save(sd, tmp_path / name, wrap)
    m = load(str(path), "backbone")
    assert type(m.model).__name__ == "ViTModel" and m.source == "local"
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        got = m.model(pixel_values=x).last_hidden_state
        want = vit_reference(sd, x, heads=6)
    assert got.shape == want.shape == (2, 17, 384)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    assert list(m.image_processor.image_mean) == checkpoints.IMAGENET_MEAN


@pytest.mark.parametrize("registers", [0, 4])
def test_dinov2_checkpoints_load_to_equal_outputs(tmp_path, registers):
    from vlens.models import load

    sd = random_sd(convert_dinov2.expected_keys(width=384, depth=2, patch=4, n_patches=16, mlp=768,
                                                registers=registers), seed=1)
    path = _save(sd, tmp_path / f"dinov2_vits14{'_reg4' if registers else ''}_pretrain.pth")
    m = load(str(path), "backbone")
    assert type(m.model).__name__ == ("Dinov2WithRegistersModel" if registers else "Dinov2Model")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        got = m.model(pixel_values=x).last_hidden_state
        want = vit_reference(sd, x, heads=6, layerscale=True)
    assert got.shape == want.shape == (2, 17 + registers, 384)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name, quick", [("open_clip_model.safetensors", False), ("ViT-B-32-quickgelu.pt", True),
                                         ("epoch_32.pt", False)])
def test_open_clip_checkpoints_load_to_equal_embeddings(tmp_path, tiny_clip, name, quick):
    from vlens.models import load

    keys = convert_open_clip.expected_keys(vision_width=768, vision_layers=1, vision_mlp=256, patch=8, n_patches=4,
                                           text_width=512, text_layers=1, text_mlp=256, context=12, vocab=60,
                                           embed=32)
    sd = random_sd(keys, seed=2)
    sd["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    wrap = (lambda s: {"epoch": 32, "name": "ViT-B-32", "state_dict": {"module." + k: v for k, v in s.items()}}) \
        if name.startswith("epoch") else None
    path = _save(sd, tmp_path / "ckpt" / name, wrap)
    for f in ("tokenizer.json", "tokenizer_config.json"):  # a tokenizer beside the checkpoint
        shutil.copyfile(tiny_clip / f, path.parent / f)
    m = load(str(path), "dual_encoder")
    assert type(m.model).__name__ == "CLIPModel" and m.tokenizer is not None
    assert m.model.config.vision_config.hidden_act == ("quick_gelu" if quick else "gelu")
    pixels = torch.randn(2, 3, 16, 16)
    ids = torch.tensor([[5, 9, 59, 0, 0, 0], [7, 3, 8, 59, 2, 2]])  # 59 = the largest id: open_clip's end of text
    with torch.no_grad():
        got_i = m.model.get_image_features(pixel_values=pixels).pooler_output
        got_t = m.model.get_text_features(input_ids=ids).pooler_output
        want_i, want_t = clip_reference(sd, pixels, ids, 12, 8, quick)  # ViT-B-32's heads
    torch.testing.assert_close(got_i, want_i, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got_t, want_t, atol=2e-5, rtol=1e-4)
    assert float(m.model.logit_scale.detach()) == pytest.approx(math.log(1 / 0.07))


def test_converted_folder_is_cached_and_loads_without_missing_weights(tmp_path):
    import transformers

    sd = random_sd(convert_dinov2.expected_keys(width=384, depth=1, patch=4, n_patches=4, mlp=768, registers=0))
    path = _save(sd, tmp_path / "d.pth")
    a = checkpoints.converted_folder(path)
    assert checkpoints.converted_folder(path) == a  # converted once
    assert json.loads((a / "CONVERTED.json").read_text())["family"] == "dinov2"
    _, info = transformers.Dinov2Model.from_pretrained(a, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


def test_open_clip_without_a_tokenizer_says_how_to_get_one(tmp_path, hf_cache):
    keys = convert_open_clip.expected_keys(vision_width=768, vision_layers=1, vision_mlp=64, patch=8, n_patches=4,
                                           text_width=512, text_layers=1, text_mlp=64, context=8, vocab=20, embed=16)
    sd = random_sd(keys)
    sd["logit_scale"] = torch.tensor(2.0)
    path = _save(sd, tmp_path / "lonely" / "open_clip_model.safetensors")
    with pytest.raises(ModelLoadError, match="vlens models fetch openai/clip-vit-base-patch32"):
        checkpoints.converted_folder(path)


def test_cli_refuses_a_file_that_is_no_checkpoint(cli, tmp_path):
    bad = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(2, 3, 3, 3)}, bad)
    img = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(img)
    code, _, err = cli("match", img, img, "--model", bad, "--size", "32", "--out", tmp_path / "m.png")
    assert code == 1 and err.startswith("error: unknown checkpoint layout (keys conv.weight)") and err.count("\n") == 1
    text = tmp_path / "notes.txt"
    text.write_text("hi")
    code, _, err = cli("match", img, img, "--model", text, "--size", "32", "--out", tmp_path / "m.png")
    assert code == 1 and "is a file but not a checkpoint" in err


# ---- issue 28: how files are found, read and configured -------------------------------------------------------

def _tiny_clip_sd(vision_width=768, text_width=512, seed=2):
    keys = convert_open_clip.expected_keys(vision_width=vision_width, vision_layers=1, vision_mlp=256, patch=8,
                                           n_patches=4, text_width=text_width, text_layers=1, text_mlp=256,
                                           context=12, vocab=60, embed=32)
    sd = random_sd(keys, seed=seed)
    sd["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    return sd


def _clip_outputs(m):
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    ids = torch.tensor([[5, 9, 59, 0, 0, 0], [7, 3, 8, 59, 2, 2]])
    with torch.no_grad():
        return (pixels, ids, m.model.get_image_features(pixel_values=pixels).pooler_output,
                m.model.get_text_features(input_ids=ids).pooler_output)


def _hf_cache_file(root: Path, repo: str, name: str, data_from: Path) -> Path:
    """``name`` in a Hugging Face cache laid out as huggingface_hub writes it: a ``snapshots/<rev>/name`` link to a
    suffix-less ``blobs/<hash>``."""
    import hashlib

    repo_dir = root / ("models--" + repo.replace("/", "--"))
    blob = repo_dir / "blobs" / hashlib.sha256(data_from.read_bytes()).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data_from, blob)
    link = repo_dir / "snapshots" / "0123abcd" / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(Path("..", "..", "blobs", blob.name))
    return link


def test_defect1_timm_safetensors_in_the_hf_cache_load_by_the_link_name(tmp_path):
    from vlens.models import load

    sd = random_sd(convert_dino.expected_keys(width=384, depth=1, patch=4, n_patches=16, mlp=256), seed=3)
    src = _save(sd, tmp_path / "src" / "model.safetensors")
    cfg = tmp_path / "src" / "config.json"
    cfg.write_text(json.dumps({"architecture": "vit_small_patch8_224", "num_classes": 0,
                               "pretrained_cfg": {"tag": "dino", "input_size": [3, 224, 224]}}))
    link = _hf_cache_file(tmp_path / "hub", "timm/vit_small_patch8_224.dino", "model.safetensors", src)
    _hf_cache_file(tmp_path / "hub", "timm/vit_small_patch8_224.dino", "config.json", cfg)
    m = load(str(link), "backbone")
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(m.model(pixel_values=x).last_hidden_state, vit_reference(sd, x, heads=6),
                                   atol=2e-5, rtol=1e-4)
    info = json.loads((m.path / "CONVERTED.json").read_text())
    assert info["source"] == str(link) and info["origin"] == "timm"
    assert info["pos_embed_interpolation"] == "exact-antialias" and "config.json" in info["settings_from"]["heads"]


def test_defect1_open_clip_in_the_hf_cache_finds_tokenizer_and_quickgelu_beside_the_link(tmp_path, tiny_clip):
    from vlens.models import load

    sd = _tiny_clip_sd()
    src = _save(sd, tmp_path / "src" / "open_clip_model.safetensors")
    repo = "timm/vit_base_patch32_clip_224.openai"  # open_clip's pretrained table: QuickGELU
    link = _hf_cache_file(tmp_path / "hub", repo, "open_clip_model.safetensors", src)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        _hf_cache_file(tmp_path / "hub", repo, f, tiny_clip / f)
    m = load(str(link), "dual_encoder")
    assert m.tokenizer is not None and m.model.config.vision_config.hidden_act == "quick_gelu"
    pixels, ids, got_i, got_t = _clip_outputs(m)
    want_i, want_t = clip_reference(sd, pixels, ids, 12, 8, quick_gelu=True)
    torch.testing.assert_close(got_i, want_i, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got_t, want_t, atol=2e-5, rtol=1e-4)
    info = json.loads((m.path / "CONVERTED.json").read_text())
    assert "openai" in info["settings_from"]["activation"] and info["text_cleaning"] == "open_clip"


def test_defect2_a_dino_training_checkpoint_with_its_args_loads_the_teacher(tmp_path):
    import argparse

    from vlens.models import load

    sd = random_sd(convert_dino.expected_keys(width=384, depth=1, patch=4, n_patches=16, mlp=256), seed=4)
    args = argparse.Namespace(arch="vit_small", patch_size=8, out_dim=65536, norm_last_layer=True, lr=0.0005,
                              global_crops_scale=(0.4, 1.0), data_path="/path/to/imagenet/train", use_fp16=True)
    student = {"module.backbone." + k: v + 1 for k, v in sd.items()}
    path = tmp_path / "checkpoint.pth"  # what main_dino.py's utils.save_on_master writes
    torch.save({"student": student, "teacher": {**{"backbone." + k: v for k, v in sd.items()},
                                                "head.mlp.0.weight": torch.zeros(8, 384)},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}, "epoch": 100,
                "args": args, "dino_loss": {"center": torch.zeros(1, 65536)}}, path)
    m = load(str(path), "backbone")
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(m.model(pixel_values=x).last_hidden_state, vit_reference(sd, x, heads=6),
                                   atol=2e-5, rtol=1e-4)  # the teacher, not the student
    info = json.loads((m.path / "CONVERTED.json").read_text())
    assert "args.arch vit_small" in info["settings_from"]["heads"]


def test_defect2_a_pickled_object_beyond_the_allowed_ones_is_refused_with_the_whole_reason(tmp_path):
    import pathlib

    path = tmp_path / "checkpoint.pth"
    torch.save({"teacher": {"cls_token": torch.zeros(1, 1, 4)}, "out": pathlib.PurePosixPath("/runs/x")}, path)
    with pytest.raises(ModelLoadError) as err:
        checkpoints.read_state_dict(path)
    msg = str(err.value)
    assert "\n" not in msg and "pathlib.PurePosixPath" in msg and "argparse.Namespace" in msg
    assert msg.endswith("where you trust the file") and len(msg) > 200  # the whole reason, not cut at 200


def test_defect3_open_clip_bin_beside_a_quickgelu_config_gets_quickgelu(tmp_path, tiny_clip):
    from vlens.models import load

    sd = _tiny_clip_sd(seed=6)
    path = _save(sd, tmp_path / "ViT-B-32" / "open_clip_pytorch_model.bin")
    (path.parent / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        "embed_dim": 32, "quick_gelu": True, "vision_cfg": {"image_size": 16, "layers": 1, "width": 768,
                                                            "patch_size": 8},
        "text_cfg": {"context_length": 12, "vocab_size": 60, "width": 512, "heads": 8, "layers": 1}},
        "preprocess_cfg": {"mean": checkpoints.OPENAI_MEAN, "std": checkpoints.OPENAI_STD}}))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tiny_clip / f, path.parent / f)
    m = load(str(path), "dual_encoder")
    assert m.model.config.vision_config.hidden_act == "quick_gelu"
    pixels, ids, got_i, got_t = _clip_outputs(m)
    want_i, want_t = clip_reference(sd, pixels, ids, 12, 8, quick_gelu=True)
    torch.testing.assert_close(got_i, want_i, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got_t, want_t, atol=2e-5, rtol=1e-4)
    sources = json.loads((m.path / "CONVERTED.json").read_text())["settings_from"]
    assert "open_clip_config.json" in sources["activation"]


def test_defect4_heads_80_wide_come_from_the_config_and_an_unknown_width_is_refused(tmp_path, tiny_clip):
    from vlens.models import load

    sd = _tiny_clip_sd(vision_width=320, seed=7)  # 4 heads of 80 (ViT-H-14's head width); 320 / 64 = 5 is wrong
    path = _save(sd, tmp_path / "shrunk-H" / "open_clip_model.safetensors")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tiny_clip / f, path.parent / f)
    with pytest.raises(ModelLoadError) as err:
        load(str(path), "dual_encoder")
    msg = str(err.value)
    assert "\n" not in msg and "cannot establish the attention heads of this 320-wide open_clip vision tower" in msg
    (path.parent / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        "embed_dim": 32, "vision_cfg": {"width": 320, "head_width": 80, "layers": 1, "patch_size": 8},
        "text_cfg": {"width": 512, "heads": 8, "layers": 1}}}))
    m = load(str(path), "dual_encoder")
    assert m.model.config.vision_config.num_attention_heads == 4
    pixels, ids, got_i, got_t = _clip_outputs(m)
    want_i, _ = clip_reference(sd, pixels, ids, 4, 8, quick_gelu=False)
    torch.testing.assert_close(got_i, want_i, atol=2e-5, rtol=1e-4)
    # a released ViT-H-14 width needs no config: the known-model table has its 16 heads of 80
    _, config, _, settings = checkpoints.convert_state_dict(meta_sd(convert_open_clip.expected_keys(
        vision_width=1280, vision_layers=1, vision_mlp=5120, patch=14, n_patches=256, text_width=1024,
        text_layers=1, text_mlp=4096, context=77, vocab=49408, embed=1024)) | {"logit_scale": torch.zeros(())})
    assert config["vision_config"]["num_attention_heads"] == 16 and config["text_config"]["num_attention_heads"] == 16
    assert "known-model table" in settings.sources["vision heads"]


def test_defect5_timm_dinov2_reg4_layout_loads_to_equal_outputs(tmp_path):
    from vlens.models import load

    sd = random_sd(convert_dinov2.expected_keys(width=384, depth=1, patch=4, n_patches=16, mlp=768, registers=4,
                                                timm=True, cls_pos=False), seed=8)
    path = _save(sd, tmp_path / "vit_small_patch14_reg4_dinov2" / "model.safetensors")
    m = load(str(path), "backbone")
    assert type(m.model).__name__ == "Dinov2WithRegistersModel"
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(m.model(pixel_values=x).last_hidden_state,
                                   vit_reference(sd, x, heads=6, layerscale=True), atol=2e-5, rtol=1e-4)
    assert m.model.config.pos_embed_interpolation == "exact-antialias"


def test_a_pos_embed_of_no_known_length_names_the_expected_layouts():
    keys = fixture("timm_vit_small_patch14_reg4_dinov2") | {"pos_embed": (1, 1368, 384)}
    with pytest.raises(ModelLoadError) as err:
        checkpoints.convert_state_dict(meta_sd(keys))
    msg = str(err.value)
    assert "\n" not in msg and "1368 positions" in msg and "DINOv2 torch.hub" in msg and "timm" in msg


def test_converted_checkpoints_are_listed_with_their_conventions(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("VLENS_CACHE", str(tmp_path / "cache"))
    sd = random_sd(convert_dino.expected_keys(width=384, depth=1, patch=4, n_patches=16, mlp=256))
    path = _save(sd, tmp_path / "dino_deitsmall8_pretrain.pth")
    checkpoints.converted_folder(path)
    code, out, _ = cli("models", "list", "--json")
    row = next(r for r in json.loads(out)["converted"] if r["source"] == str(path))
    assert code == 0 and row["interpolation"] == "offset" and row["family"] == "dino"
    assert "original DINO" in row["settings_from"]["interpolation"]
    code, out, _ = cli("models", "list")
    assert "pos-embed interpolation: offset" in out


def test_a_torchscript_archive_is_read_as_jit_without_torch_load_warnings(tmp_path):
    import warnings

    module = torch.jit.script(torch.nn.Linear(3, 2))
    path = tmp_path / "ViT-B-32.pt"
    module.save(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.load warns when handed a TorchScript archive
        sd, hints = checkpoints.read_state_dict(path)
    assert hints["jit"] and set(sd) == {"weight", "bias"}
    assert torch.equal(sd["weight"], module.weight)
