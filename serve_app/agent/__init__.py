"""The agent: tool registry, bounded loop, Serve deployment."""
