"""Union-find grouping on hand-made cases, against networkx-free brute-force closure."""

from __future__ import annotations

import itertools

import numpy as np

from artclf.dedup.groups import UnionFind, connected_groups


def closure(n: int, pairs) -> list[set[int]]:
    """Reference: repeated merging of overlapping sets until nothing changes."""
    sets = [{i} for i in range(n)] + [set(p) for p in pairs]
    changed = True
    while changed:
        changed = False
        for a, b in itertools.combinations(range(len(sets)), 2):
            if sets[a] and sets[b] and sets[a] & sets[b]:
                sets[a] |= sets[b]
                sets[b] = set()
                changed = True
    return sorted((s for s in sets if s), key=min)


def as_sets(ids: np.ndarray) -> list[set[int]]:
    out: dict[int, set[int]] = {}
    for i, g in enumerate(ids):
        out.setdefault(int(g), set()).add(i)
    return sorted(out.values(), key=min)


def test_chain_joins_transitively():
    ids = connected_groups(6, [(0, 1), (1, 2), (2, 3)])
    assert as_sets(ids) == [{0, 1, 2, 3}, {4}, {5}]


def test_ids_are_stable_and_in_first_member_order():
    ids = connected_groups(5, [(4, 3), (1, 0)])
    assert ids.tolist() == [0, 0, 1, 2, 2]


def test_cross_artist_pairs_join_like_any_other():
    artists = ["A", "A", "B", "C"]
    ids = connected_groups(4, [(1, 2), (2, 3)])
    assert {artists[i] for i in range(4) if ids[i] == ids[1]} == {"A", "B", "C"}


def test_random_graphs_match_the_reference():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 30))
        pairs = [tuple(map(int, rng.integers(0, n, 2))) for _ in range(int(rng.integers(0, 25)))]
        assert as_sets(connected_groups(n, pairs)) == closure(n, pairs)


def test_union_find_sizes():
    uf = UnionFind(4)
    uf.union(0, 1)
    uf.union(1, 0)
    assert uf.find(0) == uf.find(1) and uf.size[uf.find(0)] == 2
