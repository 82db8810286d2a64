"""Retrieval-augmented generation: the parallel plan and prompt assembly."""
