"""Joint PCA: one basis for both images, checked against scikit-learn and a full eigendecomposition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlens.errors import ConfigError
from vlens.match.pca import fit_pca, joint_pca


def _data(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(1, -2, d, dtype=torch.float64)  # clear spectrum, like real descriptors
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scales + torch.randn(d, generator=g)


@pytest.mark.parametrize("d", [16, 128])  # exact eigh path / subspace-iteration path
def test_joint_pca_matches_sklearn_on_the_stacked_data(d):
    from sklearn.decomposition import PCA

    a, b = _data(200, d, 0), _data(150, d, 1) + 0.5
    pa, pb = joint_pca(a, b, k=5, normalize=False)
    ref = PCA(5, svd_solver="full").fit(np.concatenate([a.numpy(), b.numpy()]))
    for got, x in ((pa, a), (pb, b)):
        want = ref.transform(x.numpy())
        signs = np.sign((got.numpy() * want).sum(0))  # PCA axes have no sign
        np.testing.assert_allclose(got.numpy() * signs, want, rtol=1e-6, atol=1e-8)
    basis = fit_pca(torch.cat([a, b]), 5)
    np.testing.assert_allclose(basis.explained.numpy(), ref.explained_variance_ratio_, rtol=1e-6)


def test_joint_basis_is_not_the_per_image_basis():
    a, b = _data(200, 16, 0), _data(200, 16, 1) @ torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))[0]
    joint_a, _ = joint_pca(a, b, k=3, normalize=False)
    (alone_a,) = joint_pca(a, k=3, normalize=False)
    assert not torch.allclose(joint_a.abs(), alone_a.abs(), atol=1e-3)


def test_full_dimension_normalize_and_bad_k():
    a, b = _data(20, 8, 0), _data(30, 8, 1)
    pa, pb = joint_pca(a, b, k=None, normalize=True)
    assert pa.shape == (20, 8) and pb.shape == (30, 8)
    np.testing.assert_allclose(pa.norm(dim=1).numpy(), 1.0, rtol=1e-12)
    qa, _ = joint_pca(a, b, k=None, normalize=False)
    assert torch.equal(qa, a)
    with pytest.raises(ConfigError, match="1 <= k <= 8"):
        fit_pca(a, 9)
    with pytest.raises(ConfigError, match="same dimension"):
        joint_pca(a, torch.zeros(3, 4))
