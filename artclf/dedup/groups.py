"""Union-find over duplicate pairs, and which pair ties each member to its group."""

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


Tie = tuple[str, str, float]  # (the other image's key, detector, similarity)


def ties(keys: list[str], scored: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, list[Tie]]:
    """Per image key, the detector pairs touching it, from ``{detector: (pairs over keys'
    positions, their similarities)}``."""
    out: dict[str, list[Tie]] = {}
    for kind, (pairs, sims) in scored.items():
        for (a, b), sim in zip(pairs.tolist(), sims.tolist(), strict=True):
            out.setdefault(keys[a], []).append((keys[b], kind, sim))
            out.setdefault(keys[b], []).append((keys[a], kind, sim))
    return out


def explain(members: list[dict], found: dict[str, list[Tie]]) -> tuple[list[dict], list[dict]]:
    """Why each member (a manifest row; the kept or largest first) is in its group.

    Returns (per member ``{with, by, similarity}``; the group's pairs ``{a, b, by, similarity}``),
    members named by position. The pairs: each detector pair between the first files of two
    contents, and an ``exact`` pair from each further copy of the same bytes to the first. A
    member's label is its pair on a shortest path to #1 (an exact copy, else the most similar,
    first), so the labels read as a tree rooted at the kept image; #1's is its best pair. A
    label is always a pair that was found: the kept image is not "an exact copy of itself"."""
    first: dict[str, int] = {}
    for i, r in enumerate(members):
        first.setdefault(r["sha256"], i)
    pairs = [(first[r["sha256"]], i, "exact", 1.0) for i, r in enumerate(members) if first[r["sha256"]] != i]
    for i, r in enumerate(members):
        if first[r["sha256"]] == i:
            pairs += [(i, first[o], kind, sim) for o, kind, sim in found.get(r["sha256"], []) if i < first[o]]
    edges: list[list[tuple[int, str, float]]] = [[] for _ in members]
    for a, b, kind, sim in pairs:
        edges[a].append((b, kind, sim))
        edges[b].append((a, kind, sim))

    def rank(e: tuple[int, str, float]) -> tuple:
        return e[1] != "exact", -e[2], e[0], e[1]

    why = [min(edges[0], key=rank)] + [None] * (len(members) - 1)
    seen, frontier = {0}, [0]
    while frontier:  # breadth first from #1: each member's pair towards it
        reach: dict[int, list[tuple[int, str, float]]] = {}
        for i in frontier:
            for j, kind, sim in edges[i]:
                if j not in seen:
                    reach.setdefault(j, []).append((i, kind, sim))
        for j, cands in reach.items():
            why[j] = min(cands, key=rank)
        seen |= reach.keys()
        frontier = sorted(reach)
    labels = [{"with": j, "by": kind, "similarity": round(sim, 4)} for j, kind, sim in why]
    listed = [{"a": a, "b": b, "by": kind, "similarity": round(sim, 4)} for a, b, kind, sim in sorted(pairs)]
    return labels, listed
