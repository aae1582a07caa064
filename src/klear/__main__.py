from klear.cli import main

raise SystemExit(main())
