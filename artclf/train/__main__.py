"""``accelerate launch -m artclf.train`` (and ``python -m artclf.train``) runs the stage."""

from artclf.train.stage import main

raise SystemExit(main())
