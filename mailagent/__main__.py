from mailagent.cli import main

raise SystemExit(main())
