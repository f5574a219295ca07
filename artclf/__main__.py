from artclf.cli import main

raise SystemExit(main())
