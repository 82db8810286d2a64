"""LLM layer: engine interface, the vLLM engine, the LLM Serve deployment, default-model preparation."""
