from influx_backupd.cli import main

raise SystemExit(main())
