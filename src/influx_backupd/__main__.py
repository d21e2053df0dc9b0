from influx_backupd.cli.main import main

raise SystemExit(main())
