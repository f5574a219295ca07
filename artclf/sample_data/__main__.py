"""``python -m artclf.sample_data`` runs the stage, as ``artclf sample-data`` does."""

from artclf.sample_data.stage import main

raise SystemExit(main())
