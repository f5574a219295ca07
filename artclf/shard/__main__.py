"""``python -m artclf.shard`` (and ``accelerate launch -m artclf.shard``) runs the stage."""

from artclf.shard.stage import main

raise SystemExit(main())
