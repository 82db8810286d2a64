"""Prompt templates of RAG and the agent: versioned configuration, validated like every other setting.

The defaults live in ``prompts/default.yaml`` (packaged with the code); a config file overrides any field
under ``args.prompts``. Each template is a ``str.format`` template whose placeholders are checked at load
time, so a typo in a prompt fails at start with the field's name instead of at the first request.
"""

from __future__ import annotations

import string
from functools import cache
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

_DEFAULTS = Path(__file__).with_name("prompts") / "default.yaml"

# template field -> the placeholders it may (and, for the starred ones, must) use.
PLACEHOLDERS: dict[str, tuple[set[str], set[str]]] = {
    "rag_answer_system": (set(), set()),
    "rag_answer_user": ({"sources", "question"}, {"sources", "question"}),
    "rag_source": ({"n", "text", "document_id"}, {"n", "text"}),
    "rag_no_sources": (set(), set()),
    "agent_system": ({"tools"}, {"tools"}),
    "agent_tool": ({"name", "description"}, {"name"}),
    "agent_task": ({"task"}, {"task"}),
    "agent_observation": ({"tool", "output"}, {"output"}),
    "agent_last_step": (set(), set()),
}


@cache
def default_prompts() -> dict[str, str]:
    return yaml.safe_load(_DEFAULTS.read_text())


def _field(name: str) -> str:
    return Field(default_factory=lambda: default_prompts()[name], description=f"Template '{name}'.")


class PromptSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(
        default_factory=lambda: default_prompts()["version"],
        min_length=1,
        max_length=64,
        description="Version of this prompt set, reported in RAG and agent responses. Change it with any template.",
    )
    rag_answer_system: str = _field("rag_answer_system")
    rag_answer_user: str = _field("rag_answer_user")
    rag_source: str = _field("rag_source")
    rag_no_sources: str = _field("rag_no_sources")
    agent_system: str = _field("agent_system")
    agent_tool: str = _field("agent_tool")
    agent_task: str = _field("agent_task")
    agent_observation: str = _field("agent_observation")
    agent_last_step: str = _field("agent_last_step")

    @model_validator(mode="after")
    def _check_placeholders(self) -> PromptSettings:
        for name, (allowed, required) in PLACEHOLDERS.items():
            template = getattr(self, name)
            try:
                used = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
            except ValueError as exc:
                raise ValueError(f"{name}: not a valid template ({exc})") from None
            if "" in used or any(not f.isidentifier() for f in used):
                raise ValueError(f"{name}: placeholders must be named, e.g. {{question}}")
            if used - allowed:
                raise ValueError(f"{name}: unknown placeholder(s) {sorted(used - allowed)}; allowed: {sorted(allowed)}")
            if required - used:
                raise ValueError(f"{name}: missing placeholder(s) {sorted(required - used)}")
        return self
