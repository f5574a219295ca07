"""``accelerate launch -m artclf.evaluate`` (and ``python -m artclf.evaluate``) runs the stage."""

from artclf.evaluate.stage import main

raise SystemExit(main())
