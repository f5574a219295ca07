"""Blocked top-k similarity search: memory O(N·k + block²), never an N×N matrix.

Queries and base are cut into blocks; each block product updates a running top-k; float16 input
is widened a block at a time. On two
CPU cores this searches 100k×100k 1024-d vectors in minutes (see docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np
import torch


def topk_similar(
    queries: np.ndarray, base: np.ndarray, k: int, block: int = 4096, exclude_self: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` dot products of each query row against ``base`` rows.

    Returns ``(sims, idx)``, both ``(len(queries), k)``, best first; ``idx`` is -1 where
    fewer than k base rows exist. ``exclude_self`` drops the pair (i, i), for searching
    a set against itself. Rows should be L2-normalised for cosine similarity.
    """
    # float16 rows (the stored embeddings) stay float16 until their block is multiplied
    q_all, b_all = (
        torch.from_numpy(
            np.ascontiguousarray(x if x.dtype == np.float16 else np.asarray(x, dtype=np.float32))
        )
        for x in (queries, base)
    )
    n, m = len(q_all), len(b_all)
    k_eff = min(k, m - 1 if exclude_self else m)
    sims = np.full((n, k), -np.inf, dtype=np.float32)
    idx = np.full((n, k), -1, dtype=np.int64)
    if k_eff <= 0 or n == 0:
        return sims, idx
    for qs in range(0, n, block):
        q = q_all[qs : qs + block].float()
        best_s = torch.full((len(q), k_eff), -torch.inf)
        best_i = torch.full((len(q), k_eff), -1, dtype=torch.int64)
        for bs in range(0, m, block):
            s = q @ b_all[bs : bs + block].float().T
            if exclude_self and bs < qs + len(q) and qs < bs + s.shape[1]:
                rows = torch.arange(len(q))
                cols = rows + qs - bs
                ok = (cols >= 0) & (cols < s.shape[1])
                s[rows[ok], cols[ok]] = -torch.inf
            # top-k of this tile first, then merge with the running top-k: temporaries stay
            # at one block×block tile plus block×2k, whatever N is
            tile_s, tile_pos = s.topk(min(k_eff, s.shape[1]), dim=1)
            cand_s = torch.cat([best_s, tile_s], dim=1)
            cand_i = torch.cat([best_i, tile_pos + bs], dim=1)
            best_s, pos = cand_s.topk(k_eff, dim=1)
            best_i = cand_i.gather(1, pos)
        sims[qs : qs + len(q), :k_eff] = best_s.numpy()
        idx[qs : qs + len(q), :k_eff] = best_i.numpy()
    return sims, idx


def pairs_above(sims: np.ndarray, idx: np.ndarray, threshold: float) -> np.ndarray:
    """``(P, 2)`` array of unique pairs ``(i, j)``, ``i < j``, with similarity >= threshold."""
    rows, cols = np.nonzero((sims >= threshold) & (idx >= 0))
    pairs = np.stack([rows, idx[rows, cols]], axis=1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs.sort(axis=1)
    return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)
