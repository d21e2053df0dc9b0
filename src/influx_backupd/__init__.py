"""influx-backupd: file-level backups of InfluxDB on a schedule, with measured downtime."""

__version__ = "0.1.0"
