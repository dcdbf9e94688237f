"""Pure tensor pieces of caption decoding: logit filters, one sampling step, sequence log-probabilities and
token-level prompt removal.

Hugging Face ``generate`` runs the loops (greedy, beam, sampling) for the captioner; these functions are what
it lacks for our needs (per-caption log-probabilities to rank sampled captions, prompt removal on token ids),
plus the reference versions of top-k / top-p / temperature that the tests check ``generate`` against, and
the decoding inspector's per-step view: which tokens each strategy left eligible and with what probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide logits by ``temperature`` (> 0): below 1 sharpens the distribution, above 1 flattens it."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0 (use greedy decoding for temperature 0)")
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row (B, V); the rest become -inf. Ties at the k-th value are
    kept."""
    if k <= 0:
        raise ValueError("top-k must be >= 1")
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of tokens whose probability reaches ``p`` (always the top
    one)."""
    if not 0 < p <= 1:
        raise ValueError("top-p must be in (0, 1]")
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V) each
    probs = sorted_logits.softmax(-1)
    before = probs.cumsum(-1) - probs  # probability mass strictly before each token, (B, V)
    drop_sorted = before >= p  # the first token has before == 0 < p, so it always stays
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_step(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One sampling step, nanoGPT style: (B, V) logits -> (B,) token ids."""
    logits = apply_temperature(logits, temperature)
    if top_k:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1:
        logits = top_p_filter(logits, top_p)
    probs = logits.softmax(-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of log p(target) over the positions where ``mask`` is true.

    logits (B, T, V) predict targets (B, T); mask (B, T) bool. Returns (sum (B,), count (B,)).

"""
    logp = logits.float().log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    logp = logp.masked_fill(~mask, 0.0)
    return logp.sum(-1), mask.sum(-1)


def strip_prompt(
    sequences: torch.Tensor, prefix_len: int, stop_ids: set[int], pad_id: int
) -> list[list[int]]:
    """Token ids generated after the ``prefix_len`` conditioning tokens (BOS + prompt), up to the first stop
    id.

    sequences (N, T) as returned by ``generate``. The prompt is removed by position, on token ids: the caption
    never contains the prompt's tokens unless the model generated them itself.

"""
    out = []
    for row in sequences[:, prefix_len:].tolist():
        ids = []
        for t in row:
            if t in stop_ids:
                break
            if t != pad_id:
                ids.append(t)
        out.append(ids)
    return out


def caption_targets(
    prefix_len: int, caption_ids: list[list[int]], eos_id: int, pad_id: int, prefix: torch.Tensor,
    ended: list[bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forcing input (N, T) = [prefix, caption, eos, pad...] and the mask of caption+eos positions.

    prefix (P,) is BOS + prompt tokens; the mask marks the targets (positions 1..T-1) that belong to the
    caption and its end token, so a log-probability never counts the prompt. ``ended`` (N,) False for a caption
    cut at the length limit: it gets no end token, and only its own tokens are counted (default: all ended).
"""
    n = len(caption_ids)
    ended = [True] * n if ended is None else list(ended)
    longest = max((len(c) for c in caption_ids), default=0)
    seq = torch.full((n, prefix_len + longest + 1), pad_id, dtype=torch.long)
    seq[:, :prefix_len] = prefix
    mask = torch.zeros_like(seq, dtype=torch.bool)
    for i, ids in enumerate(caption_ids):
        end = prefix_len + len(ids)
        seq[i, prefix_len:end] = torch.tensor(ids, dtype=torch.long)
        if ended[i]:
            seq[i, end] = eos_id
        mask[i, prefix_len : end + int(ended[i])] = True
    return seq, mask[:, 1:]


def generated_logprobs(
    sequences: torch.Tensor,
    step_logits: tuple[torch.Tensor, ...] | list[torch.Tensor],
    prefix_len: int,
    stop_ids: set[int],
    pad_id: int,
    end_id: int,
    beam_indices: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each caption's log-probability from ``generate``'s own per-step logits: no second decoder pass.

    sequences (N, P + T) as ``generate`` returns them; ``step_logits`` T tensors (R, V), the *raw* logits of each
    step (``output_logits=True``: temperature 1, no filtering, no repetition penalty), R = N for greedy and
    sampling, R = batch x beams for beam search, with ``beam_indices`` (N, >= T) naming the row of each step
    (-1 once a beam has finished). The caption is what :func:`strip_prompt` keeps: the tokens up to the first stop
    id. Its score counts what ``generate`` emitted: those tokens, then ``end_id`` at the stop position when the
    caption *ended*; a caption cut at the length limit (no stop id within the T steps) counts its tokens only,
    since no step ever scored an end after them. That is the teacher-forced :func:`caption_targets` +
    :func:`token_logprobs` with the same ``ended`` flags.

    Returns (sum (N,), count (N,), ended (N,) bool, ok (N,) bool). ``ok`` is False where the logits cannot say it
    (a caption that holds a pad token, which :func:`strip_prompt` drops): score those rows teacher-forced.
    """
    n, steps = sequences.shape[0], len(step_logits)
    gen = sequences[:, prefix_len : prefix_len + steps].cpu()  # (N, T') generated tokens, T' <= T
    total = torch.zeros(n, dtype=torch.float64)
    count = torch.zeros(n, dtype=torch.long)
    ended = torch.zeros(n, dtype=torch.bool)
    ok = torch.zeros(n, dtype=torch.bool)
    # per row: the steps that count and the target scored at each (the caption's tokens, then end_id if it ended)
    rows, cols, targets, owners = [], [], [], []
    for i, toks in enumerate(gen.tolist()):
        stop = next((t for t in range(len(toks)) if toks[t] in stop_ids), None)
        ended[i] = stop is not None
        length = len(toks) if stop is None else stop
        if pad_id in toks[:length]:
            continue
        ok[i] = True
        for t in range(length + int(stop is not None)):
            row = i if beam_indices is None else int(beam_indices[i, t])
            if row < 0:  # a finished beam has no row at this step: cannot happen before its stop
                ok[i] = False
                break
            rows.append(row)
            cols.append(t)
            targets.append(toks[t] if t < length else end_id)
            owners.append(i)
    if rows:
        picked = torch.stack([step_logits[c][r].float() for c, r in zip(cols, rows)])  # (K, V): counted steps only
        logp = picked.log_softmax(-1).gather(-1, torch.tensor(targets).unsqueeze(-1)).squeeze(-1)  # (K,)
        owner = torch.tensor(owners)
        total.index_add_(0, owner, logp.double().cpu())
        count.index_add_(0, owner, torch.ones_like(owner))
    bad = ~ok
    total[bad], count[bad] = 0.0, 0
    return total.float(), count, ended, ok


# ---- the decoding inspector: what the sampler could have picked at each step ------------------------------


def repetition_penalty_logits(logits: torch.Tensor, previous: list[int], penalty: float) -> torch.Tensor:
    """Hugging Face's repetition penalty on one row (V,): tokens already in ``previous`` get their logit divided
    by ``penalty`` if positive, multiplied if negative (so always less likely for penalty > 1)."""
    if penalty == 1.0 or not previous:
        return logits
    idx = torch.tensor(sorted(set(previous)), dtype=torch.long)
    seen = logits[idx]
    out = logits.clone()
    out[idx] = torch.where(seen < 0, seen * penalty, seen / penalty)
    return out


def sampling_distribution(
    logits: torch.Tensor, strategy: str, temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The distribution a decoding strategy draws the next token from, for logits (T, V) already penalised.

    Returns ``(probs (T, V), kept (T, V) bool)``: ``kept`` marks the tokens the filters leave eligible.
    sample: temperature, then top-k, then top-p (Hugging Face's order), softmax over what is left; greedy: all
    mass on the arg-max; beam: nothing is filtered per step (beams are ranked by whole-caption probability), so
    the model's own distribution at temperature 1.
    """
    if strategy == "greedy":
        best = logits.argmax(-1, keepdim=True)  # (T, 1)
        kept = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, best, True)
        return kept.float(), kept
    if strategy == "beam":
        return logits.float().softmax(-1), torch.ones_like(logits, dtype=torch.bool)
    z = apply_temperature(logits.float(), temperature)
    if top_k:
        z = top_k_filter(z, top_k)
    if top_p < 1:
        z = top_p_filter(z, top_p)
    return z.softmax(-1), torch.isfinite(z)


@dataclass(frozen=True)
class StepCandidate:
    token_id: int
    p_model: float  # probability under the model: temperature 1, no filtering
    p_sample: float  # probability the strategy gives it (0 when filtered out)
    kept: bool  # False: the filter removed it


@dataclass(frozen=True)
class DecodeStep:
    """One generated token and what it competed with."""

    token_id: int
    p_model: float
    p_sample: float
    rank: int  # 1 = the model's most probable token (the greedy pick)
    eligible: int  # tokens left after filtering
    effective: float  # exp(entropy) of the sampling distribution: how many equally likely choices it is worth
    candidates: list[StepCandidate]  # the most probable tokens under the model, best first (+ the chosen one)


def explain_steps(
    logits: torch.Tensor,
    chosen: list[int],
    previous: list[list[int]],
    strategy: str,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    banned: list[list[int]] | None = None,
    show: int = 8,
) -> list[DecodeStep]:
    """Per-step candidates for logits (T, V) that produced the tokens ``chosen`` (T,).

    ``previous[t]``: the token ids before step t (prompt included), for the repetition penalty; ``banned[t]``:
    ids forced to -inf at step t (the end token before ``min_new_tokens``). ``show``: candidates listed per step.
    """
    rows = []
    for t in range(logits.shape[0]):
        z = repetition_penalty_logits(logits[t].float(), previous[t], repetition_penalty)
        if banned and banned[t]:
            z = z.index_fill(0, torch.tensor(banned[t], dtype=torch.long), float("-inf"))
        rows.append(z)
    z = torch.stack(rows) if rows else logits.float()  # (T, V)
    p_model = logits.float().softmax(-1)  # (T, V) what the model believes, before any decoding choice
    p_sample, kept = sampling_distribution(z, strategy, temperature, top_k, top_p)
    logp = p_sample.clamp_min(1e-30).log()
    effective = (-(p_sample * logp).sum(-1)).exp()  # (T,) 1.0 = one certain choice
    steps = []
    for t, tok in enumerate(chosen):
        order = torch.argsort(p_model[t], descending=True, stable=True)  # (V,)
        top = order[:show].tolist()
        if tok not in top:
            top.append(tok)
        rank = int((order == tok).nonzero()[0, 0]) + 1
        cands = [StepCandidate(i, float(p_model[t, i]), float(p_sample[t, i]), bool(kept[t, i])) for i in top]
        steps.append(DecodeStep(tok, float(p_model[t, tok]), float(p_sample[t, tok]), rank,
                                int(kept[t].sum()), float(effective[t]), cands))
    return steps
