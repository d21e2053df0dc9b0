"""The backup jobs: cold (direct or staged copy with influxd stopped) and hot (influxd backup)."""
