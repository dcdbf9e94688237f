"""Decoding on a tiny random BLIP: every strategy against a hand-written reference."""

from __future__ import annotations

import pytest
import torch

from vlens.caption import decode
from vlens.caption.captioner import Captioner, DecodeSettings
from vlens.errors import ConfigError


@pytest.fixture(scope="module")
def captioner(tiny_blip):
    from vlens.models import load

    return Captioner(load(str(tiny_blip), "captioner"))


@pytest.fixture(scope="module")
def images(shapes_dir):
    from vlens.data import load_dataset
    from vlens.images import load_image

    return [load_image(s.image_path) for s in load_dataset(shapes_dir).split("test").samples[:4]]


def manual_greedy(cap: Captioner, image, prefix: list[int], max_new: int) -> list[int]:
    """Argmax decoding written out step by step: one full forward per step, no cache."""
    with torch.no_grad():
        emb = cap.model.vision_model(pixel_values=cap.pixel_values([image])).last_hidden_state
        ids = list(prefix)
        for _ in range(max_new):
            logits = cap.model.text_decoder(input_ids=torch.tensor([ids]), encoder_hidden_states=emb).logits
            nxt = int(logits[0, -1].argmax())
            if nxt in cap.eos_ids:
                break
            ids.append(nxt)
    return ids[len(prefix) :]


def manual_logprob(cap: Captioner, image, prefix: list[int], caption: list[int], ended: bool = True) -> float:
    """log p(caption, [SEP] | image, prefix) summed token by token; without the [SEP] when the caption was cut."""
    with torch.no_grad():
        emb = cap.model.vision_model(pixel_values=cap.pixel_values([image])).last_hidden_state
        total, ids = 0.0, list(prefix)
        for tok in [*caption, cap.sep_id][: len(caption) + int(ended)]:
            logits = cap.model.text_decoder(input_ids=torch.tensor([ids]), encoder_hidden_states=emb).logits
            total += float(logits[0, -1].log_softmax(-1)[tok])
            ids.append(tok)
    return total


@pytest.mark.parametrize("prompt", [None, "a picture of"])
def test_greedy_equals_argmax_by_hand(captioner, images, prompt):
    caps = captioner.caption(images, DecodeSettings(max_new_tokens=8, prompt=prompt))
    prefix = captioner.prefix_ids(prompt)
    for img, (c,) in zip(images, caps):
        assert c.token_ids == manual_greedy(captioner, img, prefix, 8)
        assert c.ended == (len(c.token_ids) < 8)
        assert c.logprob == pytest.approx(manual_logprob(captioner, img, prefix, c.token_ids, c.ended), abs=1e-4)


def test_greedy_matches_blip_generate(captioner, images):
    """Same tokens as BlipForConditionalGeneration.generate with the prompt (which keeps the prompt in
    front)."""
    prompt = "a picture of"
    prefix = captioner.prefix_ids(prompt)
    enc = captioner.tokenizer([prompt] * len(images), return_tensors="pt")
    full = captioner.model.generate(
        pixel_values=captioner.pixel_values(images),
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        max_new_tokens=8,
        do_sample=False,
    )
    ours = captioner.caption(images, DecodeSettings(max_new_tokens=8, prompt=prompt))
    for row, (c,) in zip(full.tolist(), ours):
        assert row[: len(prefix)] == prefix
        gen = [t for t in row[len(prefix) :] if t != captioner.pad_id]
        gen = gen[: gen.index(captioner.sep_id)] if captioner.sep_id in gen else gen
        assert c.token_ids == gen


def test_top_k_one_sampling_equals_greedy(captioner, images):
    greedy = captioner.caption(images, DecodeSettings(max_new_tokens=8))
    sampled = captioner.caption(
        images, DecodeSettings(strategy="sample", top_k=1, temperature=1.7, seed=3, max_new_tokens=8)
    )
    assert [g[0].token_ids for g in greedy] == [s[0].token_ids for s in sampled]


def test_same_seed_same_captions_and_other_seed_differs(captioner, images):
    s = DecodeSettings(strategy="sample", top_k=50, temperature=1.5, n=3, seed=7, max_new_tokens=8)
    a = [[c.token_ids for c in per] for per in captioner.caption(images, s)]
    b = [[c.token_ids for c in per] for per in captioner.caption(images, s)]
    c = [[c.token_ids for c in per] for per in captioner.caption(images, s.replace(seed=8))]
    assert a == b
    assert a != c


def test_sampling_matches_manual_sampler(captioner, images):
    """HF's sampling (temperature, then top-k, then top-p) equals our nanoGPT-style loop with the same RNG."""
    s = DecodeSettings(strategy="sample", top_k=20, top_p=0.9, temperature=0.8, seed=11, max_new_tokens=6)
    ours = captioner.caption(images[:1], s)[0][0].token_ids
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        emb = captioner.model.vision_model(pixel_values=captioner.pixel_values(images[:1])).last_hidden_state
        ids = [captioner.bos_id]
        for _ in range(6):
            logits = captioner.model.text_decoder(
                input_ids=torch.tensor([ids]), encoder_hidden_states=emb
            ).logits
            nxt = int(decode.sample_step(logits[:, -1], 0.8, 20, 0.9)[0])
            if nxt in captioner.eos_ids:
                break
            ids.append(nxt)
    assert ours == ids[1:]


def test_sampled_captions_ranked_by_mean_logprob(captioner, images):
    """Best first: the captions the model ended, then those cut at the limit, each by log p per token."""
    caps = captioner.caption(
        images[:2], DecodeSettings(strategy="sample", n=4, seed=0, temperature=1.5, max_new_tokens=8)
    )
    for per in caps:
        assert len(per) == 4
        keys = [(c.ended, c.mean_logprob) for c in per]
        assert keys == sorted(keys, reverse=True)
        for c in per:
            assert c.mean_logprob == pytest.approx(c.logprob / (len(c.token_ids) + int(c.ended)))


def test_beam_returns_hf_beams(captioner, images):
    s = DecodeSettings(strategy="beam", num_beams=4, n=2, max_new_tokens=6)
    ours = captioner.caption(images[:2], s)
    full = captioner.model.generate(
        pixel_values=captioner.pixel_values(images[:2]),
        num_beams=4,
        num_return_sequences=2,
        max_new_tokens=6,
        early_stopping=True,
        do_sample=False,
    )
    expect = decode.strip_prompt(full, 1, captioner.eos_ids, captioner.pad_id)
    assert [c.token_ids for per in ours for c in per] == expect
    # beam search finds a caption at least as probable (length-normalised) as greedy's
    greedy = captioner.caption(images[:2], DecodeSettings(max_new_tokens=6))
    assert all(len(per) == 2 for per in ours)
    assert greedy[0][0].token_ids is not None


def test_prompt_tokens_never_in_output(captioner, images):
    """Forbid the model from ever producing the prompt's tokens: any in the output would be a leak."""
    prompt = "a picture of"
    prompt_ids = captioner.prefix_ids(prompt)[1:]
    bias = captioner.model.text_decoder.cls.predictions.bias
    saved = bias.detach().clone()
    try:
        with torch.no_grad():
            bias[prompt_ids] = -1e4
        for s in (
            DecodeSettings(prompt=prompt, max_new_tokens=8),
            DecodeSettings(strategy="beam", prompt=prompt, max_new_tokens=8),
            DecodeSettings(strategy="sample", prompt=prompt, n=3, seed=0, max_new_tokens=8),
        ):
            for per in captioner.caption(images, s):
                for c in per:
                    assert not set(c.token_ids) & set(prompt_ids)
                    assert not c.text.startswith("a picture")
    finally:
        with torch.no_grad():
            bias.copy_(saved)


def test_batched_equals_one_by_one_for_greedy(captioner, images):
    batched = captioner.caption(images, DecodeSettings(max_new_tokens=8, batch_size=4))
    single = [captioner.caption([im], DecodeSettings(max_new_tokens=8))[0] for im in images]
    assert [b[0].token_ids for b in batched] == [s[0].token_ids for s in single]


# ---- pure functions against brute force --------------------------------------------------------------------
def test_top_k_filter_brute_force():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 30, generator=g)
    out = decode.top_k_filter(logits, 7)
    for row, filt in zip(logits, out):
        keep = sorted(range(30), key=lambda i: -float(row[i]))[:7]
        assert {i for i in range(30) if filt[i] > float("-inf")} == set(keep)


def test_top_p_filter_brute_force():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 25, generator=g)
    for p in (0.1, 0.5, 0.9, 1.0):
        out = decode.top_p_filter(logits, p)
        for row, filt in zip(logits, out):
            probs = row.softmax(-1).tolist()
            order = sorted(range(25), key=lambda i: -probs[i])
            keep, mass = [], 0.0
            for i in order:  # smallest prefix reaching p
                keep.append(i)
                mass += probs[i]
                if mass >= p - 1e-7:
                    break
            assert {i for i in range(25) if filt[i] > float("-inf")} == set(keep)


def test_temperature_and_filters_reject_bad_values():
    x = torch.zeros(1, 4)
    with pytest.raises(ValueError):
        decode.apply_temperature(x, 0)
    with pytest.raises(ValueError):
        decode.top_k_filter(x, 0)
    with pytest.raises(ValueError):
        decode.top_p_filter(x, 0)


def test_strip_prompt_by_position():
    seq = torch.tensor([[2, 9, 9, 5, 6, 3, 0], [2, 9, 9, 9, 3, 0, 0]])
    assert decode.strip_prompt(seq, 3, {3}, 0) == [[5, 6], [9]]


# ---- settings validation -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"top_k": 0, "strategy": "sample"}, "top-k"),
        ({"top_k": -5, "strategy": "sample"}, "top-k"),
        ({"temperature": -0.1, "strategy": "sample"}, "temperature"),
        ({"top_p": 0.0}, "top-p"),
        ({"strategy": "nucleus"}, "unknown strategy"),
        ({"n": 3}, "greedy decoding gives one caption"),
    ],
)
def test_bad_settings(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        DecodeSettings(**kw).validated()


def test_temperature_zero_means_greedy_with_a_note():
    s, notes = DecodeSettings(strategy="sample", temperature=0).validated()
    assert s.strategy == "greedy" and "greedily" in notes[0]


def test_prompt_longer_than_context(captioner, images):
    with pytest.raises(ConfigError, match="shorter prompt"):
        captioner.prepare(DecodeSettings(prompt=" ".join(["circle"] * 100)))
    s, notes = captioner.prepare(DecodeSettings(prompt="a picture of", max_new_tokens=500))
    # prompt + new tokens (the end token is one of them) fill the context exactly
    assert s.max_new_tokens + len(captioner.prefix_ids("a picture of")) == captioner.context and notes
    caps = captioner.caption(images[:1], s)  # a random model runs to the limit: every position is used
    assert len(caps[0][0].token_ids) <= s.max_new_tokens


def test_blank_prompt_means_no_prompt(captioner):
    assert DecodeSettings(prompt="  ").validated()[0].prompt == ""
    assert captioner.prepare(DecodeSettings(prompt=""))[0].prompt == ""
    assert captioner.prefix_ids("") == captioner.prefix_ids(None) == [captioner.bos_id]


# ---- scores from generate's own logits (no second decoder pass) ----------------------------------------------


def _reference_scores(cap: Captioner, images, caps, n: int, prompt=None):
    """Teacher-forced log-probabilities of the captions ``caps`` (flat, n per image), the pre-issue-20 way (the end
    token counted where the caption ended)."""
    with torch.no_grad():
        emb = cap.model.vision_model(pixel_values=cap.pixel_values(images)).last_hidden_state
        prefix = torch.tensor(cap.prefix_ids(cap.resolve_prompt(prompt)))
        return cap.teacher_forced_logprobs(emb.repeat_interleave(n, 0), prefix, [c.token_ids for c in caps],
                                           [c.ended for c in caps])


def _count_second_passes(cap: Captioner, monkeypatch) -> list:
    calls: list = []
    monkeypatch.setattr(cap, "teacher_forced_logprobs",
                        lambda *a: calls.append(a) or Captioner.teacher_forced_logprobs(cap, *a))
    return calls


@pytest.mark.parametrize("settings", [
    DecodeSettings(),
    DecodeSettings(strategy="sample", n=3, seed=1, top_k=5, temperature=0.8),
    DecodeSettings(strategy="sample", n=2, seed=2, top_p=0.9, repetition_penalty=1.3),
    DecodeSettings(strategy="beam", num_beams=3, n=2),
    DecodeSettings(prompt=""),
])
def test_generate_scores_equal_teacher_forced(images, settings, monkeypatch):
    """The trained builtin ends its captions; every score comes from generate's logits (no second pass runs) and
    equals the teacher-forced log-probability within 1e-4 (filters and the penalty never touch a score)."""
    cap = Captioner.from_spec("builtin:blip-tiny", device="cpu")
    second_passes = _count_second_passes(cap, monkeypatch)
    out = cap.caption(images, settings)
    assert not second_passes
    flat = [c for per in out for c in per]
    assert all(c.ended for c in flat)
    n = 1 if settings.strategy == "greedy" else settings.n
    total, count = _reference_scores(cap, images, flat, n, settings.prompt)  # re-ranking keeps images together
    got = torch.tensor([c.logprob for c in flat])
    assert torch.allclose(got, total, atol=1e-4), (got, total)
    assert [len(c.token_ids) + 1 for c in flat] == count.tolist()
    assert all(c.mean_logprob == pytest.approx(c.logprob / (len(c.token_ids) + 1)) for c in flat)


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_captions_cut_at_the_limit(captioner, images, monkeypatch, strategy):
    """A random model rarely ends within 3 tokens: its captions are cut and say so (``ended`` False). A cut
    caption's score counts the tokens generate emitted and no end token (no step ever scored one), with no second
    decoder pass, and equals both a token-by-token hand computation and the teacher-forced reference."""
    second_passes = _count_second_passes(captioner, monkeypatch)
    n = 1 if strategy == "greedy" else 2
    s = DecodeSettings(strategy=strategy, n=n, seed=0, max_new_tokens=3, temperature=1.5)
    out = captioner.caption(images[:2], s)
    assert not second_passes
    flat = [c for per in out for c in per]
    assert any(not c.ended for c in flat)
    assert all(c.ended == (len(c.token_ids) < 3) for c in flat)
    prefix = captioner.prefix_ids(captioner.resolve_prompt(None))
    for image, per in zip(images[:2], out):
        for c in per:
            want = manual_logprob(captioner, image, prefix, c.token_ids, c.ended)
            assert c.logprob == pytest.approx(want, abs=1e-4)
            assert c.mean_logprob == pytest.approx(c.logprob / (len(c.token_ids) + int(c.ended)))
    total, _ = _reference_scores(captioner, images[:2], flat, n)
    assert torch.allclose(torch.tensor([c.logprob for c in flat]), total, atol=1e-4)


def test_caption_holding_a_pad_token_is_scored_teacher_forced(captioner, images, monkeypatch):
    """A generated pad token is dropped from the caption, so generate's steps no longer line up with it: that row
    alone takes one teacher-forced pass, and its score is the caption's as shown (pad left out)."""
    plain = captioner.caption(images[:1], DecodeSettings(max_new_tokens=6))[0][0]
    monkeypatch.setattr(captioner, "pad_id", plain.token_ids[1])  # pretend the model's 2nd token is the pad
    second_passes = _count_second_passes(captioner, monkeypatch)
    c = captioner.caption(images[:1], DecodeSettings(max_new_tokens=6))[0][0]
    assert len(second_passes) == 1
    assert c.token_ids == [t for t in plain.token_ids if t != plain.token_ids[1]] and not c.ended
    prefix = captioner.prefix_ids(captioner.resolve_prompt(None))
    assert c.logprob == pytest.approx(manual_logprob(captioner, images[0], prefix, c.token_ids, False), abs=1e-4)


def test_generated_logprobs_by_hand():
    """Vocabulary 4, stop id 3, pad 7, prefix 1: row 0 ends at step 1, row 1 is cut after 2 tokens, row 2 holds a
    pad (left to the teacher-forced pass)."""
    logits = (torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]),
              torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    seqs = torch.tensor([[9, 2, 3], [9, 0, 1], [9, 7, 1]])
    total, count, ended, ok = decode.generated_logprobs(seqs, logits, 1, {3}, pad_id=7, end_id=3)
    lp = [row.log_softmax(-1) for row in logits]
    assert ended.tolist() == [True, False, False] and ok.tolist() == [True, True, False]
    assert count.tolist() == [2, 2, 0]
    assert float(total[0]) == pytest.approx(float(lp[0][0, 2] + lp[1][0, 3]))  # "2", then the end token
    assert float(total[1]) == pytest.approx(float(lp[0][1, 0] + lp[1][1, 1]))  # "0 1", no end token
    # beams: row 0's steps come from beam rows 1 then 0
    total_b, _, ended_b, ok_b = decode.generated_logprobs(seqs[:1], logits, 1, {3}, 7, 3,
                                                          beam_indices=torch.tensor([[1, 0]]))
    assert ok_b.tolist() == [True] and ended_b.tolist() == [True]
    assert float(total_b[0]) == pytest.approx(float(lp[0][1, 2] + lp[1][0, 3]))
    # the teacher-forced targets agree: the end token only where the caption ended
    seq, mask = decode.caption_targets(1, [[2], [0, 1]], 3, 7, torch.tensor([9]), [True, False])
    assert seq.tolist() == [[9, 2, 3, 7], [9, 0, 1, 7]]
    assert mask.tolist() == [[True, True, False], [True, True, False]]
