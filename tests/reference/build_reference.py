"""Reference side of vlens's checkpoint tier (see tests/test_reference_checkpoints.py): build real-size models with
random weights using timm's and open_clip's own code, save them in every layout README's checkpoint table lists,
and record the reference outputs. Run only as

    PYTHONPATH=tests/reference/stub:<reference packages> python tests/reference/build_reference.py OUT

in a process that never imports vlens or transformers (the torchvision stub must stay invisible to them).
Writes OUT/<layout files> and OUT/reference.pt (inputs, outputs, token ids); prints one line per step.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.modules["transformers"] = None  # open_clip imports it optionally; it must not see the torchvision stub

import open_clip  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

OFFSET = 0.1  # facebookresearch/dino and dinov2 (interpolate_offset): scale factor (grid + 0.1) / side
DINO_SIZES = [(160, 160), (120, 200)]  # besides the native 224: one square, one not
DINOV2_SIZES = [(224, 224), (168, 280)]  # besides the native 518
TEXTS = ["a photo of a dog", "Don\u2019t \ufb01x the \u201cbig\u201d   cat &amp; the mouse",
         "\uff21\uff22\uff23 full-width &lt;tag&gt;", "caf\u00c3\u00a9 mojibake"]
T0 = time.time()


def say(msg: str) -> None:
    print(f"[{time.time() - T0:5.1f} s] {msg}", flush=True)


def perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter moved by noise (norm gains off 1, biases and LayerScale non-zero), so a swapped or dropped
    tensor shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def original_interpolation(patch_pos: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(1, side*side, D) -> (1, rows*cols, D) as the original DINO / DINOv2 ``interpolate_pos_encoding`` does it:
    bicubic by scale factor ((rows + 0.1) / side, (cols + 0.1) / side), no antialiasing (the hub models' defaults)."""
    side = int(math.sqrt(patch_pos.shape[1]))
    d = patch_pos.shape[-1]
    grid = patch_pos.float().reshape(1, side, side, d).permute(0, 3, 1, 2)
    out = F.interpolate(grid, scale_factor=(float(rows + OFFSET) / side, float(cols + OFFSET) / side),
                        mode="bicubic", antialias=False)
    assert out.shape[-2:] == (rows, cols)
    return out.permute(0, 2, 3, 1).reshape(1, rows * cols, d)


def timm_at(name: str, sd: dict, size: tuple[int, int], patch: int, cls_pos: bool) -> torch.nn.Module:
    """timm's model built for ``size`` with the position table resized by the original formula."""
    rows, cols = size[0] // patch, size[1] // patch
    pos = sd["pos_embed"]
    grid = original_interpolation(pos[:, int(cls_pos):], rows, cols)
    model = timm.create_model(name, pretrained=False, num_classes=0, img_size=size)
    model.load_state_dict({**sd, "pos_embed": torch.cat([pos[:, :1], grid], 1) if cls_pos else grid})
    return model.eval()


@torch.no_grad()
def vit_family(out: Path, ref: dict, key: str, name: str, native: int, patch: int, sizes, seed: int) -> dict:
    """Outputs of timm's ``name`` (random, perturbed) at the native size, at ``sizes`` under the original code's
    interpolation (``offset``) and under timm's own (dynamic_img_size: ``exact-antialias``)."""
    model = perturb(timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True), seed)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(seed + 100)
    xs = {s: torch.randn(1, 3, *s, generator=g) for s in [(native, native), *sizes]}
    cls_pos = not getattr(model, "no_embed_class", False)
    res = {"native": model.forward_features(xs[(native, native)])}
    for s in sizes:
        res[("timm", s)] = model.forward_features(xs[s])
        res[("offset", s)] = timm_at(name, sd, s, patch, cls_pos).forward_features(xs[s])
    ref[key] = {"inputs": xs, "outputs": res}
    # timm's own hub format: config.json, model.safetensors and pytorch_model.bin
    timm.models._hub.save_for_hf(model, out / f"timm-{key}", safe_serialization="both")
    say(f"{name}: {sum(v.numel() for v in sd.values()) / 1e6:.1f} M parameters, outputs at {list(xs)}")
    return sd


def dinov2_hub_layout(sd: dict, seed: int) -> dict:
    """timm's DINOv2 state dict in the torch.hub file's layout: a mask token, ``register_tokens``, and with
    registers a class position (split off the class token, so the class token's sum is unchanged)."""
    g = torch.Generator().manual_seed(seed)
    hub = {k: v for k, v in sd.items() if k != "reg_token"}
    d = sd["cls_token"].shape[-1]
    hub["mask_token"] = torch.randn(1, d, generator=g) * 0.05
    if "reg_token" in sd:
        hub["register_tokens"] = sd["reg_token"]
        cls_pos = torch.randn(1, 1, d, generator=g) * 0.05
        hub["cls_token"] = sd["cls_token"] - cls_pos
        hub["pos_embed"] = torch.cat([cls_pos, sd["pos_embed"]], 1)
    return hub


def clip_tokenizer_files(folder: Path) -> None:
    """open_clip's BPE vocabulary written as a Hugging Face CLIP tokenizer (vocab.json, merges.txt: what
    openai/clip-vit-base-patch32 ships), so vlens tokenizes with the same vocabulary."""
    tok = open_clip.tokenizer.SimpleTokenizer()
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {names.get(k, k): v for k, v in tok.encoder.items()}
    merges = [" ".join(m) for m, _ in sorted(tok.bpe_ranks.items(), key=lambda kv: kv[1])]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))


@torch.no_grad()
def clip_family(out: Path, ref: dict) -> None:
    gelu = perturb(open_clip.create_model("ViT-B-32", pretrained=None), seed=7)
    sd = {k: v.clone().contiguous() for k, v in gelu.state_dict().items()}
    quick = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval()
    quick.load_state_dict(sd)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 3, 224, 224, generator=g)
    ids = open_clip.tokenize(TEXTS)
    ref["open_clip"] = {"inputs": x, "ids": ids, "texts": TEXTS,
                        "gelu": (gelu.encode_image(x), gelu.encode_text(ids)),
                        "quick_gelu": (quick.encode_image(x), quick.encode_text(ids))}
    say(f"open_clip ViT-B-32: {sum(v.numel() for v in sd.values()) / 1e6:.1f} M parameters")
    for sub in ("clip-safetensors", "clip-epoch", "clip-bin", "clip-openai"):
        clip_tokenizer_files(out / sub)
    save_file(sd, str(out / "clip-safetensors" / "ViT-B-32.safetensors"))
    torch.save({"epoch": 32, "name": "ViT-B-32", "state_dict": {"module." + k: v for k, v in sd.items()}},
               out / "clip-epoch" / "epoch_32.pt")  # open_clip's training checkpoint
    torch.save(sd, out / "clip-bin" / "open_clip_pytorch_model.bin")
    cfg = open_clip.get_model_config("ViT-B-32-quickgelu")
    (out / "clip-bin" / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": cfg, "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN),
                                              "std": list(open_clip.OPENAI_DATASET_STD)}}))
    traced = torch.jit.trace(quick, (x[:1], ids[:1]), check_trace=False)  # OpenAI's files are TorchScript
    traced.save(str(out / "clip-openai" / "ViT-B-32.pt"))
    say("open_clip layouts written (.safetensors, epoch_32.pt, open_clip_pytorch_model.bin + config, TorchScript)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    out = ap.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    ref: dict = {"versions": {"timm": timm.__version__, "open_clip": open_clip.__version__,
                              "torch": str(torch.__version__)}}
    say(f"timm {timm.__version__}, open_clip {open_clip.__version__}, torch {torch.__version__}")

    sd = vit_family(out, ref, "dino", "vit_small_patch8_224", 224, 8, DINO_SIZES, seed=1)
    torch.save(sd, out / "dino_deitsmall8_pretrain.pth")  # torch.hub DINO: timm keeps DINO's keys
    (out / "train").mkdir(exist_ok=True)
    torch.save({"student": {"module.backbone." + k: v + 1 for k, v in sd.items()},
                "teacher": {**{"backbone." + k: v for k, v in sd.items()},
                            "head.last_layer.weight_g": torch.ones(65536, 1)},
                "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4, "params": [0]}]}, "epoch": 100,
                "args": argparse.Namespace(arch="vit_small", patch_size=8, out_dim=65536, use_fp16=True,
                                           global_crops_scale=(0.4, 1.0), data_path="/data/imagenet/train"),
                "dino_loss": {"center": torch.zeros(1, 65536)}}, out / "train" / "checkpoint.pth")
    for key, name, seed in (("dinov2", "vit_small_patch14_dinov2", 2), ("dinov2_reg4", "vit_small_patch14_reg4_dinov2",
                                                                           3)):
        sd = vit_family(out, ref, key, name, 518, 14, DINOV2_SIZES, seed=seed)
        torch.save(dinov2_hub_layout(sd, seed), out / f"{key.replace('dinov2', 'dinov2_vits14')}_pretrain.pth")
    g = torch.Generator().manual_seed(5)
    small = torch.randn(1, 16, 3, generator=g)
    ref["offset_check"] = {"grid": small, "out": original_interpolation(small, 5, 7)}
    clip_family(out, ref)
    torch.save(ref, out / "reference.pt")
    say("reference.pt written")


if __name__ == "__main__":
    main()
