"""``artclf sample-data``: a synthetic data set in the Kaggle layout, and the truth of what it planted.

- ``stage``: the stage (``generate``, ``main``): paints the plan with worker processes, writes the set
- ``config``: ``SampleDataConfig``, its settings
- ``plan``: what every file is, decided before any is drawn (names, odd files, copies, look-alikes)
- ``paintings``: procedural styles and paintings, the copies of a painting, a ``Job``
- ``lookalikes``: different works that look alike (hard negatives for dedup)
"""

from artclf.sample_data.config import SampleDataConfig
from artclf.sample_data.stage import generate, main

__all__ = ["SampleDataConfig", "generate", "main"]
