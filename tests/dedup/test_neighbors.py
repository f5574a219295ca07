"""Blocked top-k search equals brute force on small random data."""

from __future__ import annotations

import numpy as np
import pytest

from artclf.dedup.neighbors import pairs_above, topk_similar


@pytest.mark.parametrize("n, m, k, block", [(50, 50, 5, 7), (33, 80, 10, 16), (10, 3, 5, 4), (64, 64, 1, 64)])
def test_topk_equals_brute_force(n, m, k, block):
    rng = np.random.default_rng(n * m + k)
    q = rng.standard_normal((n, 16)).astype(np.float32)
    b = rng.standard_normal((m, 16)).astype(np.float32)
    sims, idx = topk_similar(q, b, k, block=block)
    full = q @ b.T
    kk = min(k, m)
    ref_idx = np.argsort(-full, axis=1, kind="stable")[:, :kk]
    np.testing.assert_allclose(sims[:, :kk], np.take_along_axis(full, ref_idx, 1), rtol=1e-5, atol=1e-5)
    assert (idx[:, :kk] == ref_idx).mean() > 0.99  # ties in float may swap places
    assert (idx[:, kk:] == -1).all()


def test_exclude_self_never_returns_the_query():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims, idx = topk_similar(x, x, 4, block=6, exclude_self=True)
    assert not (idx == np.arange(40)[:, None]).any()
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    np.testing.assert_allclose(sims[:, 0], full.max(1), rtol=1e-5)


def test_pairs_above_threshold_are_unique_and_ordered():
    sims = np.array([[0.95, 0.5], [0.95, 0.91], [0.2, -np.inf]], dtype=np.float32)
    idx = np.array([[1, 2], [0, 2], [0, -1]])
    assert pairs_above(sims, idx, 0.9).tolist() == [[0, 1], [1, 2]]
