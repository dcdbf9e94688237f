"""Shared fixtures: offline hub, tiny models built once per session, a small shapes dataset."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
# Reproducible: the tests run the embedded models (VLENS_OFFLINE=1: no task default looks for a real model) and never
# see the user's Hugging Face cache (an empty one of their own). Tests of the real-default path unset VLENS_OFFLINE
# and save a tiny model into a temporary cache laid out like the real one.
os.environ["VLENS_OFFLINE"] = "1"
os.environ.pop("HF_HUB_CACHE", None)
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="vlens-tests-hf-")
atexit.register(shutil.rmtree, os.environ["HF_HOME"], True)
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLENS_PROGRESS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# vlens's CPU policy (src/vlens/cpu.py), put in force before anything imports torch, for this process and every
# CLI subprocess a test starts: passive OpenMP waiting, so the suite does not collapse on a loaded machine, and
# one thread, because the test models are tiny (a second thread only adds contention) and single-threaded CPU
# kernels sum in a fixed order, which the bit-exact resume tests need. VLENS_THREADS=2 tries two.
os.environ.setdefault("VLENS_THREADS", "1")
from vlens import cpu  # noqa: E402

cpu.apply()

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# The user's vlens cache, captured before the session moves VLENS_CACHE into a temporary folder: the OpenCV sample
# images fetched by `vlens data fetch opencv-samples` (scripts/install.sh does it) are read from there.
USER_CACHE = Path(os.environ.get("VLENS_CACHE") or Path.home() / ".cache" / "vlens")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip, saying why, where torch sees no CUDA GPU."""
    if not any("gpu" in item.keywords for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU; torch {torch.__version__} sees none "
                                   "(run scripts/gpu_check.py on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_collection_finish(session):
    """The reference checkpoint tier builds real-size models in a subprocess (~35 s, one thread): when a test of it
    is selected, start that build now, so it runs on the second core beside the tests before it."""
    for item in session.items:
        start = getattr(getattr(item, "module", None), "start_reference_build", None)
        if start is not None:
            start()
            return


def pytest_sessionfinish(session):
    """Stop a reference build the session never reached (an -x stop, Ctrl-C) and remove its files."""
    for item in session.items:
        stop = getattr(getattr(item, "module", None), "stop_reference_build", None)
        if stop is not None:
            stop()
            return


@pytest.fixture(autouse=True, scope="session")
def _vlens_cache(tmp_path_factory):
    """Keep the vlens cache (photos as PNG, small shapes sets) inside the test session."""
    os.environ["VLENS_CACHE"] = str(tmp_path_factory.mktemp("vlens-cache"))


@pytest.fixture(scope="session")
def opencv_samples(_vlens_cache) -> Path:
    """The real OpenCV sample images (graffiti, aloe, photos), linked into the session cache. Missing: a skip with
    the command to run, except in CI (CI=true), where the install script fetches them and a skip would hide a
    broken fetch, so the test fails."""
    src = USER_CACHE / "opencv-samples"
    if not (src / "SOURCE.txt").is_file():
        msg = f"the OpenCV sample images are not in {src}: run `vlens data fetch opencv-samples`"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + " (CI: scripts/install.sh should have fetched them)")
        pytest.skip(msg)
    dst = Path(os.environ["VLENS_CACHE"]) / "opencv-samples"
    if not dst.exists():
        dst.symlink_to(src, target_is_directory=True)
    return dst


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """A small target-style shapes dataset: 40 train / 8 val / 12 test at 64 px."""
    from vlens.data.shapes import make_shapes

    return make_shapes(tmp_path_factory.mktemp("shapes"), train=40, val=8, test=12, seed=0, size=64,
                       progress=False)


@pytest.fixture(scope="session")
def shapes_folder(shapes_dir):
    """``make(dest, split="test", n=None) -> dest``: the first ``n`` (all: None) images of a shapes split, sorted,
    copied into ``dest`` (created): a photo folder for the index, caption and web tests to mess with."""

    def make(dest: Path, split: str = "test", n: int | None = None) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        for p in sorted((shapes_dir / "images").glob(f"{split}_*.png"))[:n]:
            shutil.copy(p, dest / p.name)
        return dest

    return make


@pytest.fixture(scope="session")
def shapes_captions(shapes_dir) -> list[str]:
    from vlens.data import load_dataset

    return [c for s in load_dataset(shapes_dir) for c in s.captions]


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory) -> Path:
    from vlens.models.tiny import save_tiny

    return save_tiny("backbone", tmp_path_factory.mktemp("tiny-vit"), family="vit")


@pytest.fixture(scope="session")
def tiny_dinov2(tmp_path_factory) -> Path:
    from vlens.models.tiny import save_tiny

    return save_tiny("backbone", tmp_path_factory.mktemp("tiny-dinov2"), family="dinov2")


@pytest.fixture(scope="session")
def tiny_blip(tmp_path_factory, shapes_captions) -> Path:
    from vlens.models.tiny import save_tiny

    return save_tiny("captioner", tmp_path_factory.mktemp("tiny-blip"), texts=shapes_captions)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory, shapes_captions) -> Path:
    from vlens.models.tiny import save_tiny

    return save_tiny("dual_encoder", tmp_path_factory.mktemp("tiny-clip"), texts=shapes_captions)


@pytest.fixture(scope="session")
def clip_encoder(tiny_clip):
    """The tiny random CLIP as a DualEncoder (loaded once per process)."""
    from vlens.retrieval.model import DualEncoder

    return DualEncoder.from_spec(str(tiny_clip))


@pytest.fixture(scope="session")
def shapes_index(shapes_folder, tiny_clip, clip_encoder):
    """``make(base, n=None) -> (base/idx, base/photos)``: the first ``n`` shapes test images, indexed exactly with
    the tiny CLIP (the web tests' collection)."""
    from vlens.retrieval.index import IndexConfig, build_index

    def make(base: Path, n: int | None = None) -> tuple[Path, Path]:
        root = shapes_folder(base / "photos", n=n)
        build_index(root, base / "idx", IndexConfig(model=str(tiny_clip)),
                    embedder=(clip_encoder.encode_images, clip_encoder.dim), progress=False)
        return base / "idx", root

    return make


@pytest.fixture
def cli():
    """Run the vlens CLI in-process: ``code, out, err = cli("data", "inspect", path)``."""
    import contextlib
    import io

    from vlens.cli.main import main

    def run(*args):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
        return code, out.getvalue(), err.getvalue()

    return run


class HFCache:
    """A temporary Hugging Face hub cache laid out like the real one (models--ORG--NAME/refs/main,
    snapshots/COMMIT/...): ``add(repo_id, folder)`` puts a saved model there as if downloaded."""

    def __init__(self, root: Path):
        self.root = root

    def add(self, repo_id: str, folder: Path, commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
        repo = self.root / ("models--" + repo_id.replace("/", "--"))
        snap = repo / "snapshots" / commit
        shutil.copytree(folder, snap)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        return snap


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> HFCache:
    """The real-default path: VLENS_OFFLINE unset, HF_HUB_OFFLINE=1, an empty temporary HF cache (fill it with
    ``hf_cache.add``), the resolver's memory of earlier defaults forgotten."""
    from vlens.caption import captioner
    from vlens.match import features
    from vlens.models.hub import forget_choices

    def forget():  # as a new process would: models loaded under the same id from another test's cache go
        forget_choices()
        captioner._CACHE.clear()
        features._load_backbone.cache_clear()

    root = tmp_path / "hf-hub"
    root.mkdir()
    monkeypatch.delenv("VLENS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    forget()
    yield HFCache(root)
    forget()
