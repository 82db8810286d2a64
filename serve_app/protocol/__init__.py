"""Request and response models that are this app's own (the OpenAI chat/completions ones are vLLM's)."""
