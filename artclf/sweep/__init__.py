"""``artclf sweep plan|summary`` and ``artclf compare``: seeds and grids of training runs, chosen on
val, scored once on test, compared with bootstrap intervals.

- ``stage``: ``artclf sweep plan|summary`` (``main``)
- ``plan``: the sweep file (TOML: base, grid, seeds) -> one run folder per point, ``points.txt``
- ``summary``: choose a config on val (mean over seeds), score its runs on test, write the table
- ``compare``: ``artclf compare``: one table of runs (its own ``main``)
- ``runs``: what a run folder and an eval folder hold, read; ``table``: the table, .md and .json
"""

from artclf.sweep.stage import main

__all__ = ["main"]
