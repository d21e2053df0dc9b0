"""Checks of a backup: sha256, structure, file formats, and a restore into a throwaway server."""
