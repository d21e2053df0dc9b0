"""What is kept: run records, the catalog, the lock and crash marker, sidecars, archives, chains,
the names in the storage dir, and the readers of InfluxDB's file formats."""
