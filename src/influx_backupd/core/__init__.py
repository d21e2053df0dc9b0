"""The ground floor: config, errors, logging and the journal, systemd notify, schedules, signals."""
