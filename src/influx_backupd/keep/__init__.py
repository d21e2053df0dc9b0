"""Retention: which backups a job keeps (grandfather-father-son, chains as one) and the prune."""
