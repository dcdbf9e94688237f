"""The three model sources (local folder, HF cache by hub id, builtin) and the fast offline failure."""

import shutil
import time

import pytest

from vlens.errors import ModelLoadError
from vlens.models import load


def test_local_folder_each_kind(tiny_vit, tiny_dinov2, tiny_blip, tiny_clip):
    assert type(load(str(tiny_vit), "backbone").model).__name__ == "ViTModel"
    m = load(str(tiny_dinov2), "backbone")
    assert type(m.model).__name__ == "Dinov2Model" and m.source == "local"
    c = load(str(tiny_blip), "captioner")
    assert type(c.model).__name__ == "BlipForConditionalGeneration" and c.tokenizer is not None
    assert type(c.image_processor).__name__ == "BlipImageProcessorPil"
    assert type(load(str(tiny_clip), "dual_encoder").model).__name__ == "CLIPModel"


def test_wrong_kind_is_a_clear_error(tiny_blip):
    with pytest.raises(ModelLoadError, match="is a 'blip' model, but this needs a CLIP-style dual encoder"):
        load(str(tiny_blip), "dual_encoder")


def test_hub_id_from_a_cache_laid_out_like_the_real_one(tmp_path, tiny_vit, monkeypatch):
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = cache / "models--acme--tiny-vit" / "snapshots" / commit
    shutil.copytree(tiny_vit, snap)
    (cache / "models--acme--tiny-vit" / "refs").mkdir()
    (cache / "models--acme--tiny-vit" / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    m = load("acme/tiny-vit", "backbone")
    assert m.source == "cache" and m.path == snap and type(m.model).__name__ == "ViTModel"


def test_uncached_hub_id_fails_fast_offline():
    t0 = time.time()
    with pytest.raises(ModelLoadError) as err:
        load("acme/not-cached", "backbone")
    assert time.time() - t0 < 5
    assert "builtin:" in str(err.value) and "--model PATH" in str(err.value)


def test_uncached_hub_id_fails_fast_when_hub_unreachable(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("VLENS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    t0 = time.time()
    with pytest.raises(ModelLoadError, match="cannot be reached"):
        load("acme/not-cached-either", "backbone")
    assert time.time() - t0 < 5


def test_builtin_and_folder_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="no embedded model 'builtin:nope'"):
        load("builtin:nope", "backbone")
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load(str(tmp_path), "backbone")
    with pytest.raises(ModelLoadError, match="unknown model kind"):
        load(str(tmp_path), "detector")
