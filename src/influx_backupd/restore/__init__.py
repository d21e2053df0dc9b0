"""Restores: the swap plan (move aside, never delete, roll back), cold archives, hot chains."""
