"""``python -m artclf.sample_data`` (and ``accelerate launch -m artclf.sample_data``) runs the stage."""

from artclf.sample_data.stage import main

raise SystemExit(main())
