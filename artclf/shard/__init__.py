"""``artclf shard``: the split packed, pre-resized, into WebDataset tar shards with ``_info.json``,
on disk or ``s3://``.

- ``stage``: the stage (``ShardConfig``, ``shard``, ``main``), in parts for an array job, and the merge
- ``layout``: which sample goes into which shard, and how many shards a split gets (``auto``)
- ``job``: one shard packed (atomic), and the check that lets a rerun keep a complete one
- ``verify``: ``artclf shard --verify``: every shard's sha256 and sample count against the index
"""

from artclf.shard.stage import ShardConfig, main, shard

__all__ = ["ShardConfig", "main", "shard"]
