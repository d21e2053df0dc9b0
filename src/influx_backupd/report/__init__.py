"""What follows a run for people and machines: metrics, hooks, notifications, heartbeat, progress."""
