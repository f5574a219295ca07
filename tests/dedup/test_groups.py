"""Union-find grouping on hand-made cases, against networkx-free brute-force closure; the pair
that labels each member of a group."""

from __future__ import annotations

import itertools

import numpy as np

from artclf.dedup.groups import UnionFind, connected_groups, explain, ties


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


def test_each_member_is_labelled_by_a_pair_that_was_found():
    # K kept; A and B the same bytes; C found by the CNN against K and against A
    members = [{"sha256": s} for s in ("k", "a", "a", "c")]
    keys = ["a", "c", "k"]
    found = ties(
        keys,
        {
            "hash": (np.array([[2, 0]]), np.array([0.9])),
            "cnn": (np.array([[0, 1], [1, 2]]), np.array([0.85, 0.81])),
        },
    )
    why, pairs = explain(members, found)
    assert why == [
        {"with": 1, "by": "hash", "similarity": 0.9},  # the kept image: its best pair, not "exact, 1.0"
        {"with": 0, "by": "hash", "similarity": 0.9},
        {"with": 1, "by": "exact", "similarity": 1.0},  # through its twin, which is tied to K
        {"with": 0, "by": "cnn", "similarity": 0.81},  # tied to the kept image rather than to A
    ]
    assert pairs == [
        {"a": 0, "b": 1, "by": "hash", "similarity": 0.9},
        {"a": 0, "b": 3, "by": "cnn", "similarity": 0.81},
        {"a": 1, "b": 2, "by": "exact", "similarity": 1.0},
        {"a": 1, "b": 3, "by": "cnn", "similarity": 0.85},
    ]


def test_labels_on_random_groups_are_pairs_on_shortest_paths_to_the_first():
    rng = np.random.default_rng(1)
    for _ in range(50):
        n = int(rng.integers(2, 12))
        members = [{"sha256": f"s{int(rng.integers(0, n))}"} for _ in range(n)]
        keys = sorted({m["sha256"] for m in members})
        # a random spanning tree over the contents plus extra edges: one connected group
        order = list(rng.permutation(len(keys)))
        edges = [(order[i], order[int(rng.integers(0, i))]) for i in range(1, len(keys))]
        if len(keys) > 1:
            edges += [tuple(rng.choice(len(keys), 2, replace=False)) for _ in range(int(rng.integers(0, 4)))]
        sims = rng.uniform(0.8, 1.0, len(edges))
        found = ties(keys, {"cnn": (np.array(edges, dtype=np.int64).reshape(-1, 2), sims)})
        why, pairs = explain(members, found)
        listed = {(p["a"], p["b"], p["by"], p["similarity"]) for p in pairs}
        hops = {0: 0}  # reference: plain BFS over the listed pairs
        while len(hops) < n:
            hops |= {
                b if a in hops else a: 1 + hops[a if a in hops else b]
                for a, b, _, _ in listed
                if (a in hops) != (b in hops)
            }
        for i, w in enumerate(why):
            j = w["with"]
            assert (min(i, j), max(i, j), w["by"], w["similarity"]) in listed, (i, w, listed)
            assert w["by"] != "exact" or members[i]["sha256"] == members[j]["sha256"]
            assert i == 0 or hops[j] == hops[i] - 1, (i, w, hops)
