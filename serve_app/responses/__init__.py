"""The Responses API as chat completions: items and stream events translated both ways (pure: no I/O)."""
