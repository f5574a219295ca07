"""Union-find over duplicate pairs, and the keep policy of a group."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class UnionFind:
    """Disjoint sets over ``0..n-1`` with path halving and union by size."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]


def connected_groups(n: int, pairs: Iterable[tuple[int, int]] | np.ndarray) -> np.ndarray:
    """Group id per item: ids are 0, 1, … in order of each group's first item (so stable)."""
    uf = UnionFind(n)
    for a, b in pairs:
        uf.union(int(a), int(b))
    ids: dict[int, int] = {}
    return np.array([ids.setdefault(uf.find(i), len(ids)) for i in range(n)], dtype=np.int64)
