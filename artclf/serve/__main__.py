"""``python -m artclf.serve`` (and ``accelerate launch -m artclf.serve``) runs the stage."""

from artclf.serve.app import main

raise SystemExit(main())
