"""``artclf dedup``: near-duplicate groups across all artists, one copy kept per group.

- ``stage``: the stage (``dedup``, ``main``): detectors joined by union-find, groups written to the manifest
- ``config``: ``DedupConfig``, its settings and the thresholds in force
- ``features``: the per-image pass (perceptual hashes, CNN embeddings, keypoints), cached, in parts
- ``phash``, ``neighbors``, ``geometry``, ``alignment``: hashes, nearest neighbours, ORB + RANSAC
  verification, aligned-thumbnail verification
- ``groups``: union-find, and the found pair that ties each member in; ``report``: report.json,
  groups.json, the per-artist loss check; ``montage``: the pictures of the groups
"""

from artclf.dedup.config import DedupConfig
from artclf.dedup.stage import dedup, main

__all__ = ["DedupConfig", "dedup", "main"]
