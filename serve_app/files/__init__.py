"""Document files: their kind told by content, parsed into located sections in a child process."""
