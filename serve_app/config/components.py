"""The components' own settings (each Serve application's ``args``, serve_app/config/apps.py) and the names of
the applications that run them."""

from __future__ import annotations

from pydantic import Field

from serve_app.config.model_settings import ServedModel
from serve_app.config.names import AGENT, EMBEDDER, INGRESS, VECTOR_STORE, is_llm_deployment
from serve_app.config.prompts import PromptSettings
from serve_app.config.settings import AgentSettings, IngressSettings, ModelSettings, VectorSettings, _Strict

RETRIEVAL = "retrieval"
AGENT_APP = "agent"


class LLMAppSettings(ServedModel):
    """An LLM application's args: the model it serves, and which LLM deployment that is."""

    deployment: str = Field(description="Its LLM deployment's name, LLMServer-<served name>.")


class RetrievalAppSettings(_Strict):
    """The retrieval application's args (the Embedder and the VectorStore)."""

    vector: VectorSettings = Field(default_factory=VectorSettings, description="Retrieval tier.")


class AgentAppSettings(_Strict):
    """The agent application's args."""

    model: ModelSettings = Field(default_factory=ModelSettings, description="The model it uses (agent.model).")
    llm_deployment: str = Field(description="The LLM deployment serving that model.")
    llm_app: str = Field(description="The application of that deployment.")
    retrieval_app: str | None = Field(default=None, description="The retrieval application (None: none).")
    ingress: IngressSettings = Field(default_factory=IngressSettings, description="Deadlines and retries of its calls.")
    agent: AgentSettings = Field(default_factory=AgentSettings, description="The tool-using agent.")
    prompts: PromptSettings = Field(default_factory=PromptSettings, description="Prompt templates (versioned).")


def component_app(app: str, deployment: str) -> str:
    """The Serve application that runs ``deployment`` of the plain application ``app``."""
    if deployment == INGRESS:
        return app
    if is_llm_deployment(deployment):
        return f"{app}-{deployment}"
    if deployment in (EMBEDDER, VECTOR_STORE):
        return f"{app}-{RETRIEVAL}"
    if deployment == AGENT:
        return f"{app}-{AGENT_APP}"
    raise ValueError(f"no application runs a deployment named {deployment!r}")

