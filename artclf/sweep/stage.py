"""``artclf sweep plan FILE --runs DIR`` and ``artclf sweep summary DIR``: a grid × seeds of
training runs planned as one run folder per point (an array job, a task each), then the config
chosen on val and only its runs scored on test. ``artclf compare`` tables any runs."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from artclf.config import stage_main
from artclf.sweep import plan, summary

USAGE = """usage: artclf sweep {plan,summary} [options]   (artclf sweep plan --help)

  plan FILE --runs DIR   one run folder per point of the sweep file (grid × seeds), DIR/points.txt
  summary DIR            choose the config on val (mean over seeds), score its runs on test, one table"""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "plan":
        return stage_main(plan.PlanConfig, plan.plan, "artclf sweep plan", plan.__doc__, rest)
    if command == "summary":
        return stage_main(
            summary.SummaryConfig, summary.summarize, "artclf sweep summary", summary.__doc__, rest
        )
    print(f"artclf sweep: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2
