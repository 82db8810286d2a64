"""Releases: versioned in-place updates, history, automatic rollback."""
