"""``python -m artclf.serve`` runs the stage, as ``artclf serve`` does."""

from artclf.serve.app import main

raise SystemExit(main())
