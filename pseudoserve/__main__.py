from pseudoserve.cli import main

raise SystemExit(main())
