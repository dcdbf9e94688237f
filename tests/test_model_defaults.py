"""Defaults by task: the real model when it is in the Hugging Face cache, the builtin with one notice otherwise.

The cache here is a temporary one laid out like the real one (``hf_cache`` in conftest) holding tiny models saved
under the real ids, so the real-default code path runs in milliseconds and offline.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image

from vlens.models.defaults import MATCH_FALLBACK, TASKS, notice
from vlens.models.hub import add_listener, remove_listener, resolve_default

BLIP, CLIP, DINO = (TASKS[t].real for t in ("caption", "retrieval", "match"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(base).save(d / "a.png")
    Image.fromarray(base[8:40, 8:56]).save(d / "b.png")
    return d


@pytest.fixture
def events():
    seen = []
    add_listener(seen.append)
    yield seen
    remove_listener(seen.append)


def test_defaults_are_data_with_the_real_ids():
    assert (BLIP, CLIP, DINO) == ("Salesforce/blip-image-captioning-base", "openai/clip-vit-base-patch32",
                                  "facebook/dino-vits8")
    assert TASKS["match"].fallback == MATCH_FALLBACK
    for d in TASKS.values():
        assert d.fallback.startswith("builtin:") and d.knows and d.size_mb > 0
        line = notice(d.task, d.fallback, "is not in the Hugging Face cache and HF_HUB_OFFLINE=1")
        assert "\n" not in line and d.fallback in line and f"vlens models fetch {d.real}" in line


def test_empty_cache_offline_falls_back_at_once_with_one_event(hf_cache, events):
    t0 = time.time()
    for _ in range(3):  # decided once per process: one event however many loads ask
        choice = resolve_default("caption")
    assert time.time() - t0 < 1
    assert choice.source == "builtin" and choice.spec == "builtin:blip-tiny" and "HF_HUB_OFFLINE=1" in choice.reason
    assert [e["event"] for e in events] == ["fallback"] and events[0]["task"] == "caption"


def test_cached_real_model_is_the_default(hf_cache, tiny_blip, events):
    hf_cache.add(BLIP, tiny_blip)
    choice = resolve_default("caption")
    assert (choice.spec, choice.source) == (BLIP, "cache") and not events


def test_vlens_offline_keeps_the_builtin_even_when_cached(hf_cache, tiny_blip, monkeypatch, events):
    hf_cache.add(BLIP, tiny_blip)
    monkeypatch.setenv("VLENS_OFFLINE", "1")
    choice = resolve_default("caption")
    assert choice.spec == "builtin:blip-tiny" and "VLENS_OFFLINE=1" in choice.reason


def test_half_written_cache_entry_is_not_used(hf_cache, tiny_vit):
    snap = hf_cache.add(DINO, tiny_vit)
    (snap / "model.safetensors").unlink()  # a config without weights: an interrupted copy
    assert resolve_default("match").source == "builtin"


def test_caption_match_index_use_the_cached_real_models(cli, hf_cache, tiny_blip, tiny_vit, tiny_clip, photos,
                                                        tmp_path):
    for repo, folder in ((BLIP, tiny_blip), (DINO, tiny_vit), (CLIP, tiny_clip)):
        hf_cache.add(repo, folder)
    code, out, err = cli("caption", photos / "a.png", "--json", "--max-new-tokens", "3")
    assert code == 0, err
    info = json.loads(out)
    assert (info["model"], info["model_source"]) == (BLIP, "cache") and "note: caption runs" not in err

    code, out, err = cli("match", photos / "a.png", photos / "b.png", "--size", "32", "--out", tmp_path / "m.png",
                         "--json")
    assert code == 0, err
    info = json.loads(out)
    assert (info["model"], info["model_source"]) == (DINO, "cache") and "note:" not in err

    code, out, err = cli("index", "build", photos, "--out", tmp_path / "ix", "--workers", "0", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert (info["model"], info["model_source"]) == (CLIP, "cache")

    code, out, err = cli("models", "list", "--json")
    assert code == 0, err
    rows = json.loads(out)
    cached = {r["id"] for r in rows["cached"]}
    assert {BLIP, CLIP, DINO} <= cached
    assert all(t["cached"] for t in rows["tasks"])


def test_empty_cache_uses_builtins_with_the_notice(cli, hf_cache, photos, tmp_path):
    code, out, err = cli("caption", photos / "a.png", "--json", "--max-new-tokens", "3")
    assert code == 0, err
    info = json.loads(out)
    assert (info["model"], info["model_source"]) == ("builtin:blip-tiny", "builtin")
    notes = [ln for ln in err.splitlines() if ln.startswith("note: caption runs")]
    assert len(notes) == 1 and "synthetic shapes" in notes[0] and f"vlens models fetch {BLIP}" in notes[0]

    code, out, err = cli("match", photos / "a.png", photos / "b.png", "--size", "32", "--out", tmp_path / "m.png",
                         "--json")
    assert code == 0, err
    assert json.loads(out)["model_source"] == "builtin"
    assert f"note: match runs {MATCH_FALLBACK}" in err and f"vlens models fetch {DINO}" in err


def test_explicit_builtin_says_nothing(cli, hf_cache, photos):
    code, out, err = cli("caption", photos / "a.png", "--model", "builtin:blip-tiny", "--json",
                         "--max-new-tokens", "3")
    assert code == 0, err
    assert json.loads(out)["model_source"] == "builtin" and "note: caption runs" not in err


def test_a_fused_match_fallback_still_names_its_model(monkeypatch, hf_cache):
    from vlens.models import defaults, load
    from vlens.models.hub import source_of

    fused = "builtin:dino-tiny*0.3+sift:8*0.7"
    assert defaults.first_part(fused) == "builtin:dino-tiny" and source_of(fused) == "builtin"
    assert "4-layer ViT/8" in notice("match", fused, "is not in the Hugging Face cache and HF_HUB_OFFLINE=1")
    monkeypatch.setitem(defaults.TASKS, "match", defaults.TaskDefault(
        "match", "backbone", DINO, 87, fused, "match"))
    assert resolve_default("match").spec == fused
    assert load(None, "backbone").spec == "builtin:dino-tiny"
