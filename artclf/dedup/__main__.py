"""``python -m artclf.dedup`` (and ``accelerate launch -m artclf.dedup``) runs the stage."""

from artclf.dedup.stage import main

raise SystemExit(main())
