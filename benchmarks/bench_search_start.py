"""How long `vlens search IDX "text"` takes from the shell, cold, with a real-size CLIP ViT-B/32: ONNX Runtime
exports (no torch import) against the torch engine, same index, same process start each run.

    .venv/bin/python benchmarks/bench_search_start.py                 # 5 runs per engine
    .venv/bin/python benchmarks/bench_search_start.py --runs 3 --work /tmp/bench-search

The model is ``CLIPModel(CLIPConfig())`` (ViT-B/32 image tower, 12-layer 512-wide text tower, 151 M parameters,
random weights, seed 0: there is no hub here) saved with ``save_pretrained`` beside builtin:clip-tiny's WordPiece
tokenizer and the real model's preprocessing (224 px, CLIP mean/std). The index holds the scikit-image photos
(two crops each). ``vlens index build --engine auto`` makes and verifies both towers' exports once (timed
separately); then every search is a new process (``python -m vlens search``), as from a shell. Reported: the median
wall time per engine, plus ``python -c pass`` and ``vlens --help`` as floors, and whether the runs returned the same
hits in the same order.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_model(folder: Path) -> None:
    if (folder / "config.json").is_file():
        return
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(text_config={"bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0})
    model = transformers.CLIPModel(cfg).eval()
    model.save_pretrained(folder)
    tiny = ROOT / "src/vlens/models/builtin/clip-tiny"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny / name, folder / name)
    proc = transformers.CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    proc.save_pretrained(folder)


def make_photos(folder: Path) -> int:
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = ["astronaut", "camera", "cat", "coffee", "rocket", "brick", "grass", "gravel", "coins", "colorwheel",
             "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "retina", "text"]
    n = 0
    for name in names:
        try:
            im = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        except Exception:  # noqa: BLE001 - a photo that needs a download: skip it
            continue
        w, h = im.size
        im.save(folder / f"{name}.jpg")
        im.crop((0, 0, w // 2, h // 2)).save(folder / f"{name}-crop.jpg")
        n += 2
    return n


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {r.stderr.strip()[-500:]}")
    return dt, r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/vlens-bench-search")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--query", default="a red car")
    args = ap.parse_args()
    work = Path(args.work)
    env = {**os.environ, "VLENS_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1", "VLENS_OFFLINE": "1",
           "PYTHONPATH": str(ROOT / "src")}
    model, photos, idx = work / "clip-vit-b32-random", work / "photos", work / "idx"
    make_model(model)
    n = make_photos(photos)
    py = [sys.executable, "-m", "vlens"]
    if not idx.is_dir():
        t_build, _ = timed(py + ["index", "build", str(photos), "--out", str(idx), "--model", str(model),
                                 "--engine", "auto", "--workers", "0"], env)
        print(f"index build with exports ({n} photos): {t_build:.1f} s")
    floor_py, _ = timed([sys.executable, "-c", "pass"], env)
    floor_help, _ = timed(py + ["--help"], env)
    times: dict[str, list[float]] = {"auto": [], "torch": []}
    outs: dict[str, set] = {"auto": set(), "torch": set()}
    for _ in range(args.runs):
        for engine in ("auto", "torch"):  # alternating, so load drifts hit both
            dt, out = timed(py + ["search", str(idx), args.query, "--engine", engine], env)
            times[engine].append(dt)
            outs[engine].add(out)
    load = os.getloadavg()[0]
    same = len(outs["auto"] | outs["torch"]) == 1
    print(f"\n{n} photos, real-size CLIP ViT-B/32 (random weights), {args.runs} cold starts per engine, "
          f"load average {load:.2f}\n")
    print("| command | median wall | runs |")
    print("|---|---:|---|")
    print(f"| `python -c pass` | {floor_py:.2f} s | 1 |")
    print(f"| `vlens --help` | {floor_help:.2f} s | 1 |")
    for engine in ("auto", "torch"):
        label = "ONNX Runtime export, no torch import" if engine == "auto" else "torch + transformers"
        med = statistics.median(times[engine])
        print(f"| `vlens search IDX \"{args.query}\" --engine {engine}` ({label}) | {med:.2f} s | "
              f"{', '.join(f'{t:.2f}' for t in times[engine])} |")
    ratio = statistics.median(times["auto"]) / statistics.median(times["torch"])
    print(f"\nexport / torch: x{ratio:.2f}; same hits in the same order: {same}")


if __name__ == "__main__":
    main()
