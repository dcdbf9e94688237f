"""DINO pieces against hand computations: loss, centre, EMA, head, schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlens.ssl import dino
from vlens.training import cosine_schedule


def _softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def reference_loss(student, teacher, center, st, tt, n_global):
    """DINO's original double loop over (teacher view, student view), written with NumPy."""
    s_views = np.split(student, len(student) // (len(teacher) // n_global))
    t_views = np.split(teacher, n_global)
    total, n = 0.0, 0
    for iq, t in enumerate(t_views):
        for v, s in enumerate(s_views):
            if v == iq:
                continue
            per = []
            for b in range(len(t)):
                q = _softmax((t[b] - center[0]) / tt)
                log_p = np.log(_softmax(s[b] / st))
                per.append(-(q * log_p).sum())
            total += np.mean(per)
            n += 1
    return total / n


def test_loss_matches_the_double_loop():
    g = torch.Generator().manual_seed(0)
    b, k, views = 3, 7, 5
    s = torch.randn(views * b, k, generator=g, dtype=torch.float64)
    t = torch.randn(2 * b, k, generator=g, dtype=torch.float64)
    c = torch.randn(1, k, generator=g, dtype=torch.float64) * 0.1
    got = dino.dino_loss(s, t, c, 0.1, 0.04, 2)
    want = reference_loss(s.numpy(), t.numpy(), c.numpy(), 0.1, 0.04, 2)
    assert float(got) == pytest.approx(want, rel=1e-10)


def test_loss_by_hand_two_prototypes():
    # one image, two views, K=2. Teacher view 0 logits (0, 0) -> target (0.5, 0.5); student view 1 logits
    # (0, ln 3) * student_temp -> p = (1/4, 3/4). Teacher view 1 and student view 0 mirror that. The loss is
    # the mean of the two cross-entropies -0.5 ln(1/4) - 0.5 ln(3/4).
    st = 0.1
    s = torch.tensor([[0.0, math.log(3) * st], [0.0, math.log(3) * st]], dtype=torch.float64)
    t = torch.zeros(2, 2, dtype=torch.float64)
    got = dino.dino_loss(s, t, torch.zeros(1, 2, dtype=torch.float64), st, 0.04, 2)
    assert float(got) == pytest.approx(-0.5 * math.log(0.25) - 0.5 * math.log(0.75), rel=1e-12)


def test_loss_has_no_gradient_into_the_teacher():
    s = torch.randn(8, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    dino.dino_loss(s, t, torch.zeros(1, 5), 0.1, 0.04, 2).backward()
    assert s.grad is not None and t.grad is None


def test_center_update():
    c = torch.tensor([[1.0, 2.0]])
    t = torch.tensor([[0.0, 4.0], [2.0, 0.0], [4.0, 2.0]])  # mean (2, 2)
    new = dino.update_center(c, t, 0.9)
    assert torch.allclose(new, torch.tensor([[0.9 * 1 + 0.1 * 2, 0.9 * 2 + 0.1 * 2]]))


def test_ema_update():
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    dino.ema_update(teacher, student, 0.75)
    for k, v in teacher.state_dict().items():
        assert torch.allclose(v, 0.75 * t0[k] + 0.25 * student.state_dict()[k])
    dino.ema_update(teacher, student, 0.0)  # momentum 0 copies the student
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, student.state_dict()[k])


def test_head_weight_norm_and_frozen_magnitude():
    head = dino.DINOHead(16, out_dim=40, hidden_dim=24, bottleneck_dim=8)
    x = torch.randn(5, 16)
    assert head(x).shape == (5, 40)
    w = head.last_layer.weight  # (40, 8): every prototype row has unit norm
    assert torch.allclose(w.norm(dim=1), torch.ones(40), atol=1e-5)
    g = head.last_layer.parametrizations.weight.original0
    assert not g.requires_grad
    head(x).sum().backward()
    dino.cancel_last_layer_grad(head)
    assert all(p.grad is None for p in head.last_layer.parameters())
    assert head.mlp[0].weight.grad is not None


def test_multicrop_net_groups_by_size(tiny_vit):
    from vlens.models import load

    net = dino.MultiCropNet(load(str(tiny_vit), "backbone").model, dino.DINOHead(32, 10, 16, 8))
    crops = [torch.randn(2, 3, 32, 32)] * 2 + [torch.randn(2, 3, 16, 16)] * 3
    out = net(crops)
    assert out.shape == (10, 10)
    # rows are crop-major: crop 0's rows equal a forward of crop 0 alone
    alone = net([crops[0]])
    assert torch.allclose(out[:2], alone, atol=1e-5)


def test_schedules_endpoints():
    lr = cosine_schedule(5e-4, 1e-6, 100, 10)
    assert lr[0] == 0 and lr[10] == pytest.approx(5e-4) and lr[-1] == pytest.approx(1e-6) and len(lr) == 100
    mom = cosine_schedule(0.996, 1.0, 50)
    assert mom[0] == pytest.approx(0.996) and mom[-1] == pytest.approx(1.0) and np.all(np.diff(mom) >= 0)
    tt = dino.teacher_temp_schedule(0.04, 0.07, 3, 10, 5)
    assert len(tt) == 50 and tt[0] == pytest.approx(0.04) and tt[14] == pytest.approx(0.07)
    assert np.all(tt[15:] == 0.07)


def test_entropy_diagnostics():
    k = 8
    uniform = torch.zeros(4, k)
    per, batch = dino.output_entropy(uniform, 0.1)
    assert per == pytest.approx(math.log(k), rel=1e-5) and batch == pytest.approx(math.log(k), rel=1e-5)
    collapsed = torch.zeros(4, k)
    collapsed[:, 0] = 100.0
    per, batch = dino.output_entropy(collapsed, 0.1)
    assert per < 1e-3 and batch < 1e-3


def test_patch_correspondence_by_hand():
    # student box (0,0)-(8,8), 2x2 grid -> centres (2,2) (6,2) (2,6) (6,6); teacher box (4,0)-(12,8), 2x2 grid
    gs = torch.tensor([[0.0, 0.0, 8.0, 8.0, 0.0]])
    gt = torch.tensor([[4.0, 0.0, 12.0, 8.0, 0.0]])
    idx, valid = dino.patch_correspondence(gs, gt, 2, 2)
    assert valid.tolist() == [[False, True, False, True]]
    assert idx[0, 1] == 0 and idx[0, 3] == 2  # (6,2) -> teacher u=0.25 -> column 0, row 0
    # a flipped teacher mirrors columns
    idx_f, _ = dino.patch_correspondence(gs, torch.tensor([[4.0, 0.0, 12.0, 8.0, 1.0]]), 2, 2)
    assert idx_f[0, 1] == 1 and idx_f[0, 3] == 3
    # identical views map every patch to itself, flipped or not
    for flip in (0.0, 1.0):
        g = torch.tensor([[3.0, 5.0, 40.0, 30.0, flip]])
        idx, valid = dino.patch_correspondence(g, g, 4, 4)
        assert valid.all() and idx[0].tolist() == list(range(16))


def test_patch_correspondence_with_rotation():
    # a view rotated by 90 degrees about its centre: its top-left patch shows the box's bottom-left corner
    g0 = torch.tensor([[0.0, 0.0, 8.0, 8.0, 0.0, 0.0]])
    g90 = torch.tensor([[0.0, 0.0, 8.0, 8.0, 0.0, math.pi / 2]])
    idx, valid = dino.patch_correspondence(g90, g0, 2, 2)
    # rotating by +90 deg maps offset (dx, dy) -> (-dy, dx): view patch (col 0, row 0) = offset (-2, -2) -> (2, -2)
    assert valid.all() and idx[0].tolist() == [1, 3, 0, 2]
    # round trip: view -> image -> view is the identity for any geometry
    g = torch.tensor([[10.0, 20.0, 50.0, 44.0, 1.0, 0.3]])
    u, v = torch.rand(1, 50), torch.rand(1, 50)
    x, y = dino.view_to_image(g, u, v)
    u2, v2 = dino.image_to_view(g, x, y)
    assert torch.allclose(u, u2, atol=1e-5) and torch.allclose(v, v2, atol=1e-5)
    # 5-column geometry (no angle) still works
    idx5, _ = dino.patch_correspondence(g0[:, :5], g0[:, :5], 2, 2)
    assert idx5[0].tolist() == [0, 1, 2, 3]


def test_dense_loss_matches_a_loop():
    torch.manual_seed(0)
    b, k = 2, 6
    geom = torch.tensor([[[0.0, 0, 8, 8, 0], [4, 0, 12, 8, 1], [2, 2, 6, 6, 0]]] * b)
    sp = [torch.randn(b, 4, k), torch.randn(b, 4, k), torch.randn(b, 1, k)]
    tp = [torch.randn(b, 4, k), torch.randn(b, 4, k)]
    c = torch.randn(1, k) * 0.1
    got = dino.dense_dino_loss(sp, tp, geom, c, 0.1, 0.05)
    terms = []
    for t in range(2):
        for s in range(3):
            if s == t:
                continue
            gs_ = round(sp[s].shape[1] ** 0.5)
            for bi in range(b):
                x0, y0, x1, y1, fl = geom[bi, s, :5].tolist()
                tx0, ty0, tx1, ty1, tfl = geom[bi, t, :5].tolist()
                for r in range(gs_):
                    for col in range(gs_):
                        u = (col + 0.5) / gs_
                        u = 1 - u if fl else u
                        x, y = x0 + u * (x1 - x0), y0 + (r + 0.5) / gs_ * (y1 - y0)
                        ut, vt = (x - tx0) / (tx1 - tx0), (y - ty0) / (ty1 - ty0)
                        ut = 1 - ut if tfl else ut
                        if not (0 <= ut < 1 and 0 <= vt < 1):
                            continue
                        j = int(vt * 2) * 2 + int(ut * 2)
                        q = torch.softmax((tp[t][bi, j] - c[0]) / 0.05, -1)
                        terms.append(-(q * torch.log_softmax(sp[s][bi, r * gs_ + col] / 0.1, -1)).sum())
    assert float(got) == pytest.approx(float(torch.stack(terms).mean()), rel=1e-5)


def test_multicrop_net_with_patch_head(tiny_vit):
    from vlens.models import load

    net = dino.MultiCropNet(load(str(tiny_vit), "backbone").model, dino.DINOHead(32, 10, 16, 8),
                            dino.DINOHead(32, 12, 16, 8, n_layers=2))
    logits, patches, tokens = net([torch.randn(2, 3, 32, 32)] * 2 + [torch.randn(2, 3, 16, 16)])
    assert [tuple(t.shape) for t in tokens] == [(2, 16, 32)] * 2 + [(2, 4, 32)]
    assert logits.shape == (6, 10) and [tuple(p.shape) for p in patches] == [(2, 16, 12)] * 2 + [(2, 4, 12)]
    # tokens without a patch head (the patch InfoNCE alone): no patch logits, same tokens
    net = dino.MultiCropNet(net.backbone, net.head, return_tokens=True)
    logits, patches, tokens = net([torch.randn(2, 3, 32, 32)] * 2)
    assert patches == [] and [tuple(t.shape) for t in tokens] == [(2, 16, 32)] * 2


def test_dense_contrastive_loss_matches_a_loop():
    torch.manual_seed(1)
    b, d = 2, 5
    geom = torch.tensor([[[0.0, 0, 8, 8, 0], [4, 0, 12, 8, 1], [2, 2, 6, 6, 0]]] * b)
    st = [torch.randn(b, 4, d), torch.randn(b, 4, d), torch.randn(b, 1, d)]
    tt = [torch.randn(b, 4, d), torch.randn(b, 4, d)]
    got = dino.dense_contrastive_loss(st, tt, geom, temp=0.2)
    terms = []
    for t in range(2):
        for s in range(3):
            if s == t:
                continue
            g = round(st[s].shape[1] ** 0.5)
            idx, valid = dino.patch_correspondence(geom[:, s], geom[:, t], g, 2)
            for bi in range(b):
                for i in range(st[s].shape[1]):
                    if not valid[bi, i]:
                        continue
                    q = st[s][bi, i] / st[s][bi, i].norm()
                    sims = torch.stack([q @ (k / k.norm()) for k in tt[t][bi]]) / 0.2
                    terms.append(-torch.log_softmax(sims, 0)[idx[bi, i]])
    assert float(got) == pytest.approx(float(torch.stack(terms).mean()), rel=1e-5)


def test_dense_contrastive_keys_from_the_student_get_gradients():
    torch.manual_seed(2)
    geom = torch.tensor([[[0.0, 0, 8, 8, 0, 0], [2, 0, 10, 8, 0, 0.2]]])
    views = [torch.randn(1, 4, 6, requires_grad=True) for _ in range(2)]
    dino.dense_contrastive_loss(views, views, geom, detach_keys=False).backward()
    with_keys = views[0].grad.clone()
    views[0].grad = None
    dino.dense_contrastive_loss(views, views, geom, detach_keys=True).backward()
    assert not torch.allclose(with_keys, views[0].grad)  # keys add their own gradient when not detached
