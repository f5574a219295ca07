"""``python -m artclf.dedup`` runs the stage, as ``artclf dedup`` does."""

from artclf.dedup.stage import main

raise SystemExit(main())
