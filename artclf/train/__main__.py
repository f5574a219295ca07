"""``python -m artclf.train`` (and ``accelerate launch -m artclf.train``) runs the stage."""

from artclf.train.stage import main

raise SystemExit(main())
