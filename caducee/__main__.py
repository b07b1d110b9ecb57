from caducee.cli import main

raise SystemExit(main())
