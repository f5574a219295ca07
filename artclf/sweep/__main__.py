"""``python -m artclf.sweep`` runs the stage, as ``artclf sweep`` does."""

from artclf.sweep.stage import main

raise SystemExit(main())
