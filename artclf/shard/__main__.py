"""``python -m artclf.shard`` runs the stage, as ``artclf shard`` does."""

from artclf.shard.stage import main

raise SystemExit(main())
