"""The reference tier: checkpoints made by the code that makes them, converted by vlens, outputs compared.

How it works:

1. ``scripts/install.sh`` installs timm 1.0.31 and open_clip_torch 3.3.0 with ``--no-deps`` into
   ``.ref-packages/`` at the repository root (``VLENS_REF_PACKAGES`` names another folder), never into the venv:
   their dependency torchvision does not load beside the CPU torch vlens pins, and transformers breaks when it
   finds a broken (or stubbed) torchvision.
2. A subprocess runs ``tests/reference/build_reference.py`` with ``PYTHONPATH`` = the stub
   ``tests/reference/stub`` (a minimal ``torchvision``: the few names timm and open_clip import, placeholders that
   refuse to be used) + the reference packages. That process imports neither vlens nor transformers (it blocks the
   latter). It builds real-size models with random, perturbed weights using timm's and open_clip's own code
   (timm ``vit_small_patch8_224``: DINO's key layout; ``vit_small_patch14_dinov2`` and ``..._reg4_dinov2``; open_clip
   ``ViT-B-32`` and ``ViT-B-32-quickgelu``), writes them in every layout README's checkpoint table lists (torch.hub
   DINO ``.pth``, a DINO training checkpoint with ``args``, timm ``model.safetensors`` / ``pytorch_model.bin`` +
   ``config.json``, DINOv2 ``..._pretrain.pth`` with and without registers, open_clip ``.safetensors`` /
   ``epoch_N.pt`` / ``open_clip_pytorch_model.bin`` + ``open_clip_config.json``, OpenAI-style TorchScript) and saves
   the reference outputs: at the native size, and at two other sizes (one non-square) under timm's interpolation
   and under the original DINO/DINOv2 formula (bicubic by scale factor (grid + 0.1) / side; no package provides it,
   so the script writes it and this module checks it against the hand computation of ``test_pos_embed``).
   conftest starts that subprocess as soon as collection has selected a test of this module, in the background
   (its ~35 s run on the second core beside the tests before this module), and the ``reference`` fixture waits.
3. Here, in the ordinary test process, each file is loaded with ``vlens.models.load(PATH)`` (the ``--model PATH``
   path) and its outputs must equal the reference within 1e-4: at the native size, and at the other sizes under the
   convention vlens declares for that source (``offset`` for torch.hub files, ``exact-antialias`` for timm's).
   open_clip's token ids for texts with curly quotes, ligatures, full-width letters and HTML entities must be the
   ids vlens's query path gives.

Missing reference packages skip the tier locally and fail it under ``CI=true``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STUB = ROOT / "tests" / "reference" / "stub"
BUILDER = ROOT / "tests" / "reference" / "build_reference.py"
REF_PACKAGES = Path(os.environ.get("VLENS_REF_PACKAGES") or ROOT / ".ref-packages")
TOL = 1e-4
DINO_SIZES = [(160, 160), (120, 200)]
DINOV2_SIZES = [(224, 224), (168, 280)]

ARTIFACT = ROOT / "test-artifacts" / "reference_checkpoints.json"  # the differences measured (kept by CI)

pytestmark = pytest.mark.slow


def _record(row: str, **numbers) -> None:
    import json

    ARTIFACT.parent.mkdir(exist_ok=True)
    data = json.loads(ARTIFACT.read_text()) if ARTIFACT.is_file() else {}
    data[row] = {k: float(f"{float(v):.3g}") for k, v in numbers.items()}
    ARTIFACT.write_text(json.dumps(data, indent=1) + "\n")


def _have_reference_packages() -> bool:
    return (REF_PACKAGES / "timm").is_dir() and (REF_PACKAGES / "open_clip").is_dir()


def _need_reference_packages() -> None:
    if _have_reference_packages():
        return
    msg = (f"reference packages missing in {REF_PACKAGES}: run scripts/install.sh (it installs timm==1.0.31 and "
           "open_clip_torch==3.3.0 with --no-deps there)")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(msg)
    pytest.skip(msg)


_BUILD: dict = {}  # the one reference build of this session: {"proc": Popen, "out": folder}


def start_reference_build() -> None:
    """Start the reference subprocess in the background (conftest calls this when collection selected a test of
    this module, so its ~35 s overlap the tests before it on the second core); the fixture waits for it."""
    if _BUILD or not _have_reference_packages():
        return
    out = Path(tempfile.mkdtemp(prefix="vlens-reference-"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONPATH=os.pathsep.join([str(STUB), str(REF_PACKAGES)]), OMP_NUM_THREADS="1",
               PYTHONDONTWRITEBYTECODE="1")
    with open(out / "builder.log", "wb") as log:  # a file, not a pipe nobody reads until the end
        proc = subprocess.Popen([sys.executable, str(BUILDER), str(out)], env=env, stdout=log,
                                stderr=subprocess.STDOUT, cwd=out)
    _BUILD.update(proc=proc, out=out)


def stop_reference_build() -> None:
    """Kill a build still running and remove its files (the module's fixture does this when it is done)."""
    if not _BUILD:
        return
    if _BUILD["proc"].poll() is None:
        _BUILD["proc"].kill()
        _BUILD["proc"].wait()
    shutil.rmtree(_BUILD["out"], ignore_errors=True)
    _BUILD.clear()


@pytest.fixture(scope="module")
def reference():
    """(folder of layout files, reference outputs) from one run of the reference subprocess."""
    _need_reference_packages()
    start_reference_build()  # already running when conftest started it
    proc, out = _BUILD["proc"], _BUILD["out"]
    try:
        rc = proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        stop_reference_build()
        pytest.fail("reference builder still running after 600 s")
    if rc != 0:
        log = (out / "builder.log").read_text(errors="replace")[-6000:]
        stop_reference_build()
        pytest.fail(f"reference builder failed (rc {rc}):\n{log}")
    yield out, torch.load(out / "reference.pt", weights_only=True)
    stop_reference_build()


def test_the_builder_saw_the_pinned_reference_versions_and_no_vlens(reference):
    _, ref = reference
    assert ref["versions"]["timm"] == "1.0.31" and ref["versions"]["open_clip"] == "3.3.0"
    assert "torchvision" not in sys.modules or "stub" not in str(getattr(sys.modules["torchvision"], "__file__", ""))


def test_the_original_formula_of_the_reference_is_the_hand_computation(reference):
    from test_pos_embed import _by_hand

    from vlens.models.pos_embed import resize_grid

    _, ref = reference
    grid, got = ref["offset_check"]["grid"], ref["offset_check"]["out"]
    want = _by_hand(grid.reshape(4, 4, 3).double().numpy(), 5, 7, "offset")
    assert torch.allclose(got.reshape(5, 7, 3).double(), torch.from_numpy(want), atol=1e-5)
    assert torch.allclose(resize_grid(grid, 5, 7, "offset"), got, atol=1e-6)


def _hf_cache_link(root: Path, repo: str, files: list[Path]) -> Path:
    """The files as huggingface_hub lays them out: snapshots/<rev>/NAME links to suffix-less blobs."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    for f in files:
        blob = repo_dir / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, blob)
        link = repo_dir / "snapshots" / "a1b2c3" / f.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("..", "..", "blobs", blob.name))
    return repo_dir / "snapshots" / "a1b2c3"


# (file under the reference folder, reference key, the convention vlens must declare for it)
VIT_ROWS = [
    ("dino_deitsmall8_pretrain.pth", "dino", "offset"),
    ("train/checkpoint.pth", "dino", "offset"),  # main_dino.py's training checkpoint: the teacher
    ("timm-dino/model.safetensors", "dino", "exact-antialias"),
    ("timm-dino/pytorch_model.bin", "dino", "exact-antialias"),
    ("hf-cache:timm/vit_small_patch8_224.dino", "dino", "exact-antialias"),
    ("dinov2_vits14_pretrain.pth", "dinov2", "offset"),
    ("timm-dinov2/model.safetensors", "dinov2", "exact-antialias"),
    ("dinov2_vits14_reg4_pretrain.pth", "dinov2_reg4", "offset"),
    ("timm-dinov2_reg4/model.safetensors", "dinov2_reg4", "exact-antialias"),
]


@pytest.mark.parametrize("name, key, convention", VIT_ROWS, ids=[r[0] for r in VIT_ROWS])
def test_vit_layouts_reproduce_the_reference_at_native_and_other_sizes(reference, tmp_path, name, key, convention):
    from vlens.models import load

    folder, ref = reference
    if name.startswith("hf-cache:"):
        timm_dir = folder / "timm-dino"
        path = _hf_cache_link(tmp_path / "hub", name.split(":", 1)[1],
                              [timm_dir / "model.safetensors", timm_dir / "config.json"]) / "model.safetensors"
    else:
        path = folder / name
    m = load(str(path), "backbone")
    assert m.model.config.pos_embed_interpolation == convention
    kw = {"interpolate_pos_encoding": True} if m.model.config.model_type == "vit" else {}
    xs, outs = ref[key]["inputs"], ref[key]["outputs"]
    native = next(iter(xs))
    with torch.no_grad():
        got = m.model(pixel_values=xs[native], **kw).last_hidden_state
        assert got.shape == outs["native"].shape
        measured = {"native": (got - outs["native"]).abs().max()}
        assert measured["native"] <= TOL, f"native {native}"
        for size in DINO_SIZES if key == "dino" else DINOV2_SIZES:
            want = outs[("offset" if convention == "offset" else "timm", size)]
            other = outs[("timm" if convention == "offset" else "offset", size)]
            got = m.model(pixel_values=xs[size], **kw).last_hidden_state
            err = (got - want).abs().max()
            measured[f"{size[0]}x{size[1]}"] = err
            measured[f"{size[0]}x{size[1]} other convention"] = (other - want).abs().max()
            assert err <= TOL, f"{size}: {float(err):.2e} from the {convention} reference"
            assert (other - want).abs().max() > 100 * TOL  # the conventions really differ there
    _record(name, **measured)


CLIP_ROWS = [
    ("clip-safetensors/ViT-B-32.safetensors", "gelu"),
    ("clip-epoch/epoch_32.pt", "gelu"),
    ("clip-bin/open_clip_pytorch_model.bin", "quick_gelu"),  # QuickGELU from open_clip_config.json beside it
    ("clip-openai/ViT-B-32.pt", "quick_gelu"),  # TorchScript, as OpenAI's files
]


@pytest.mark.parametrize("name, act", CLIP_ROWS, ids=[r[0] for r in CLIP_ROWS])
def test_open_clip_layouts_reproduce_embeddings_and_token_ids(reference, name, act):
    from vlens.models import load
    from vlens.retrieval.model import DualEncoder

    folder, ref = reference
    m = load(str(folder / name), "dual_encoder")
    assert m.model.config.vision_config.hidden_act == act and m.model.config.text_cleaning == "open_clip"
    r = ref["open_clip"]
    want_i, want_t = r[act]
    with torch.no_grad():
        got_i = m.model.get_image_features(pixel_values=r["inputs"]).pooler_output
        got_t = m.model.get_text_features(input_ids=r["ids"]).pooler_output
    _record(name, image=(got_i - want_i).abs().max(), text=(got_t - want_t).abs().max())
    assert (got_i - want_i).abs().max() <= TOL and (got_t - want_t).abs().max() <= TOL
    # the query path gives open_clip's ids (up to its end-of-text token; open_clip pads with 0, HF with eos)
    enc = DualEncoder(m)
    ids = enc.text_inputs(r["texts"])["input_ids"]
    eot = m.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    for text, mine, theirs in zip(r["texts"], ids.tolist(), r["ids"].tolist(), strict=True):
        n = theirs.index(eot) + 1
        assert mine[:n] == theirs[:n], text
    raw = m.tokenizer(list(r["texts"]))["input_ids"]  # without the cleaning, some texts tokenize differently
    assert sum(a[:len(b)] != b[:len(a)] for a, b in zip(raw, ids.tolist(), strict=True)) >= 2
