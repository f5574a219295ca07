"""``artclf train`` (under ``accelerate launch -m artclf.train``): the training run.

- ``stage``: the stage (``TrainConfig``, ``train``, ``main``): the run from first step to ``model.pt``
- ``engine``: one epoch of training and the learning-rate schedule
- ``losses``: CE + soft-F1 over the global batch; ``recipe``: optimizer, flips, SyncBatchNorm choice
- ``checkpoint``: saved states, newest first, last K kept; ``runlock``: one writer per run folder
- ``preemption``: stop signals become a saved state and exit 75; watchdogs for what cannot end well
- ``runlog``: console line, TensorBoard, ``history.jsonl`` and the plots drawn from it

Shared with evaluate: the input pipeline (``artclf.data``) and exact evaluation
(``artclf.metrics.eval_loop``).
"""

from artclf.train.stage import TrainConfig, main, train

__all__ = ["TrainConfig", "main", "train"]
