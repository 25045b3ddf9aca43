from shipyard.cli.main import main

raise SystemExit(main())
