"""The off-site settings: the `[offsite]` section's model (it lives in core/, with the config)."""

from influx_backupd.core.offsite_section import MiB, OffsiteSection, parse_size

OffsiteSettings = OffsiteSection

__all__ = ["MiB", "OffsiteSettings", "parse_size"]
