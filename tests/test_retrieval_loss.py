"""InfoNCE against a hand computation; temperature parametrisation and clamping; the gather on one process."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vlens.retrieval.loss import (
    clamp_logit_scale_,
    contrastive_loss,
    gather,
    info_nce,
    temperature_to_logit_scale,
)


def _hand_info_nce(img, txt, temperature):
    """Plain-Python symmetric InfoNCE: mean over rows of -log softmax, both directions, averaged."""
    n = len(img)
    sim = [[sum(a * b for a, b in zip(img[i], txt[j])) / temperature for j in range(n)] for i in range(n)]
    i2t = sum(-sim[i][i] + math.log(sum(math.exp(sim[i][j]) for j in range(n))) for i in range(n)) / n
    t2i = sum(-sim[j][j] + math.log(sum(math.exp(sim[i][j]) for i in range(n))) for j in range(n)) / n
    return 0.5 * (i2t + t2i)


def test_info_nce_matches_hand_computation():
    img = [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]
    txt = [[0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]]
    want = _hand_info_nce(img, txt, 0.5)
    got = info_nce(torch.tensor(img), torch.tensor(txt), torch.tensor(math.log(2.0)))
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_info_nce_is_the_mean_of_both_directions():
    torch.manual_seed(0)
    a, b = F.normalize(torch.randn(6, 4), dim=-1), F.normalize(torch.randn(6, 4), dim=-1)
    scale = torch.tensor(2.3)
    logits = scale.exp() * a @ b.t()
    target = torch.arange(6)
    want = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    assert info_nce(a, b, scale).item() == pytest.approx(want.item(), rel=1e-6)
    # swapping the towers gives the same symmetric loss
    assert info_nce(b, a, scale).item() == pytest.approx(want.item(), rel=1e-6)


def test_perfect_alignment_and_low_temperature_give_near_zero_loss():
    e = torch.eye(4)
    assert info_nce(e, e, torch.tensor(temperature_to_logit_scale(0.01))).item() < 1e-10
    # at a high temperature the same perfect pairs still cost about log(B)
    assert info_nce(e, e, torch.tensor(temperature_to_logit_scale(1e3))).item() == pytest.approx(math.log(4), 1e-2)


def test_learnable_temperature_gets_gradient_and_is_clamped():
    torch.manual_seed(0)
    scale = torch.nn.Parameter(torch.tensor(temperature_to_logit_scale(0.07)))
    a = F.normalize(torch.randn(8, 4), dim=-1)
    info_nce(a, a, scale).backward()
    assert scale.grad is not None and scale.grad.item() < 0  # aligned pairs: sharpening lowers the loss
    with torch.no_grad():
        scale.fill_(10.0)  # T = 4.5e-5, far below the floor
    clamp_logit_scale_(scale, min_temperature=0.01, max_temperature=1.0)
    assert float(1 / scale.detach().exp()) == pytest.approx(0.01, rel=1e-5)
    with torch.no_grad():
        scale.fill_(-3.0)  # T = 20
    clamp_logit_scale_(scale, min_temperature=0.01, max_temperature=1.0)
    assert float(1 / scale.detach().exp()) == pytest.approx(1.0, rel=1e-5)
    assert scale.requires_grad  # clamping in place keeps it a leaf parameter


def test_gather_is_identity_on_one_process():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather(x) is x
    a = F.normalize(torch.randn(5, 3), dim=-1)
    s = torch.tensor(1.0)
    assert contrastive_loss(a, a, s).item() == pytest.approx(info_nce(a, a, s).item())
