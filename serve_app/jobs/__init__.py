"""Batch jobs submitted with `ray job submit` to a cluster running the app."""
