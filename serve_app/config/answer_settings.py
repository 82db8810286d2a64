"""Settings of what the app answers with beyond plain chat: the Responses API, RAG and the agent (sections of
``AppSettings``, serve_app/config/settings.py)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from serve_app.config.base import Strict as _Strict
from serve_app.config.names import DEFAULT_TOOLS, FINAL, TOOLS


class ResponsesSettings(_Strict):
    """The Responses API (/v1/responses, /v1/conversations), its responses and conversations kept in the state
    store (serve_app/state/responses.py)."""

    enabled: bool = Field(default=True, description="Serve /v1/responses and /v1/conversations (needs a model).")
    retention_s: float = Field(
        default=30 * 86400, gt=0,
        description="Stored responses older than this are deleted (OpenAI keeps them 30 days); conversations are "
        "kept until deleted.",
    )
    max_context_items: int = Field(
        default=512, ge=1,
        description="Largest number of items one response's model call may carry: its previous response's or "
        "conversation's items and its own input (a longer context is refused with 400).",
    )


class RagSettings(_Strict):
    """POST /v1/rag: the question searched inside the app, then the cited answer streamed from the sources."""

    enabled: bool = Field(default=True, description="Serve /v1/rag (needs the model and the vector tier).")
    model: str | None = Field(default=None, description="Served name of the model that answers (default: the first "
                              "model).")
    default_top_k: int = Field(
        default=4, ge=1, le=100, description="Sources retrieved when the request names no top_k."
    )
    max_top_k: int = Field(default=10, ge=1, le=100, description="Largest top_k a RAG request may ask for.")
    answer_max_tokens: int = Field(
        default=256, ge=1, le=8192, description="Default and largest max_tokens of the answer."
    )
    max_context_chars: int = Field(
        default=3000, ge=100, le=200_000,
        description="Sources are cut to this many characters in total (context budget)."
    )
    retrieval_timeout_s: float = Field(
        default=3.0, gt=0, le=600,
        description="Past this the search is dropped and the answer is given without sources "
        "(`degraded: true`)."
    )
    timeout_s: float = Field(default=120.0, gt=0, description="Deadline of a whole RAG answer (or of its first event).")
    temperature: float = Field(default=0.0, ge=0, le=2, description="Sampling temperature of the answer.")

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        # The draft (an LLM answer written while the search ran, merged into the prompt) put a whole generation
        # before the first token and was not shown to improve answers: removed. `draft: false` stays accepted so
        # configs that turned it off still load.
        if isinstance(data, dict) and ("draft" in data or "draft_max_tokens" in data):
            data = dict(data)
            if data.pop("draft", False):
                raise ValueError("rag.draft was removed (it delayed the first answer token by a whole generation); "
                                 "delete the key")
            data.pop("draft_max_tokens", None)
        return data

    @model_validator(mode="after")
    def _check(self) -> RagSettings:
        if self.default_top_k > self.max_top_k:
            raise ValueError("default_top_k must not exceed max_top_k")
        return self


class AgentSettings(_Strict):
    """POST /v1/agent: a bounded tool loop in its own deployment."""

    enabled: bool = Field(
        default=True, description="Deploy the agent (needs the model; search tools need the vector tier)."
    )
    model: str | None = Field(
        default=None, description="Served name of the model that chooses the tool calls (default: "
        "the first model)."
    )
    tools: tuple[str, ...] = Field(
        default=DEFAULT_TOOLS,
        min_length=1,
        description=f"Allow-list of tools the agent may call; must include {FINAL!r}. Known tools: {sorted(TOOLS)}.",
    )
    default_max_steps: int = Field(default=4, ge=1, le=64, description="Steps when the request names no max_steps.")
    max_steps: int = Field(default=8, ge=1, le=64, description="Largest max_steps a request may ask for.")
    tool_timeout_s: float = Field(default=5.0, gt=0, le=600, description="Deadline of one tool call; past it the step "
                                  "records an error observation and the loop goes on.")
    deadline_s: float = Field(default=120.0, gt=0, le=3600, description="Deadline of a whole agent run.")
    step_max_tokens: int = Field(
        default=320, ge=16, le=4096,
        description="Length bound of one generated tool call. Keep it above the longest call the schema allows "
        "(string arguments are at most 256 characters), or a call can be cut off.",
    )
    observation_chars: int = Field(default=1200, ge=50, le=100_000, description="Tool outputs are cut to this length.")
    temperature: float = Field(default=0.0, ge=0, le=2, description="Sampling temperature of tool calls.")

    @model_validator(mode="after")
    def _check(self) -> AgentSettings:
        unknown = [t for t in self.tools if t not in TOOLS]
        if unknown:
            raise ValueError(f"unknown tool(s) {unknown} in tools; known tools: {sorted(TOOLS)}")
        if FINAL not in self.tools:
            raise ValueError(f"tools must include {FINAL!r}, the tool that ends a run")
        if len(set(self.tools)) != len(self.tools):
            raise ValueError("tools lists a tool twice")
        if self.default_max_steps > self.max_steps:
            raise ValueError("default_max_steps must not exceed max_steps")
        return self
