"""``artclf evaluate``: the honest score of a model on a split, with bootstrap intervals.

- ``stage``: the stage (``run``, ``main``): the exact pass over the split, calibration, the
  open-set scores, the intervals (:mod:`artclf.metrics.bootstrap`), ``metrics.json``
- ``config``: ``EvaluateConfig``, its flags
- ``report``: predictions, per-class figures, the most confident mistakes, ``report.md`` and
  the console summary
"""

from artclf.evaluate.config import EvaluateConfig
from artclf.evaluate.stage import main, run

__all__ = ["EvaluateConfig", "main", "run"]
