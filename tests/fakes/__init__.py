"""Fakes for faults the real components cannot produce on demand; each implements the real interface."""
