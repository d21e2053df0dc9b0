"""The daemon: the loop (signals only queue; the loop acts), schedules, reload, status."""
