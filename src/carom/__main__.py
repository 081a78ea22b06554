from carom.cli.main import main

raise SystemExit(main())
