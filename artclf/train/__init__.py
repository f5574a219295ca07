"""``artclf train`` (under ``accelerate launch -m artclf.train``): the training run.

- ``stage``: the stage (``train``, ``main``): the run from first step to ``model.pt``; ``config``:
  its flags (``TrainConfig``); ``runconfig``: which of them a resume may change
- ``order``: which sample is trained where (exact epochs); ``stream``: the train input in that
  order; ``shardcache``: node-local copies of S3 shards
- ``engine``: one epoch of training and the learning-rate schedule
- ``losses``: CE + soft-F1 over the global batch; ``recipe``: optimizer, flips, SyncBatchNorm choice
- ``checkpoint``: saved states, newest first, last K kept; ``runlock``: one writer per run folder
- ``preemption``: stop signals become a saved state and exit 75 (Ctrl-C: 130); watchdogs for
  what cannot end well; ``hangs``: the stall watchdog and each rank's stacks in ``RUN/debug/``;
  ``debugreport``: ``artclf debug RUN``, which reads them; ``outcome``: why a trainer ended
  (saved, permanent error), recorded for the launch script's exit code
- ``runlog``: console line, TensorBoard, ``history.jsonl`` and the plots drawn from it

Shared with evaluate: the input pipeline's nouns (``artclf.data``) and exact evaluation
(``artclf.metrics.eval_loop``).
"""

from artclf.train.config import TrainConfig
from artclf.train.stage import main, train

__all__ = ["TrainConfig", "main", "train"]
