"""The agent's tool registry: names, descriptions and pydantic argument schemas.

Specs only (no Ray, no handles): the names are declared in ``serve_app.config.names`` (the configuration
validates its allow-list against them), one spec here under each; the loop builds the JSON schema the engine
enforces from the specs. The deployment binds the implementations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from serve_app.config.names import CALCULATOR, DELETE_DOCUMENT, FINAL, GET_DOCUMENT, SEARCH_DOCUMENTS


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchDocumentsArgs(_Args):
    query: str = Field(..., min_length=1, max_length=100, description="What to look for.")
    top_k: int = Field(3, ge=1, le=5, description="How many passages to return.")


class GetDocumentArgs(_Args):
    document_id: str = Field(..., min_length=1, max_length=256, description="A document id from a search result.")


class CalculatorArgs(_Args):
    expression: str = Field(..., min_length=1, max_length=100, description="Arithmetic, e.g. (3 + 4) * 2.")


class FinalAnswerArgs(_Args):
    answer: str = Field(..., min_length=1, max_length=200, description="The answer to the task.")


class DeleteDocumentArgs(_Args):
    document_id: str = Field(..., min_length=1, max_length=256, description="The document to delete.")


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    args: type[_Args]


REGISTRY: dict[str, ToolSpec] = {
    t.name: t
    for t in (
        ToolSpec(SEARCH_DOCUMENTS, "search the document store; returns passages with their document ids",
                 SearchDocumentsArgs),
        ToolSpec(GET_DOCUMENT, "read a whole document by its id", GetDocumentArgs),
        ToolSpec(CALCULATOR, "evaluate an arithmetic expression", CalculatorArgs),
        ToolSpec(FINAL, "give the final answer and stop", FinalAnswerArgs),
        # Registered so that a configuration may name it, never in the default allow-list: a tool that
        # changes data is only reachable when an operator allows it explicitly.
        ToolSpec(DELETE_DOCUMENT, "delete a document by its id", DeleteDocumentArgs),
    )
}



def call_schema(names: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """JSON schema of one tool call ``{"tool": name, "arguments": {...}}`` restricted to ``names``.

    One alternative per tool, so the engine's guided decoding can only produce a call to an allowed tool
    with arguments valid for that tool.
    """
    variants = []
    for name in names:
        spec = REGISTRY[name]
        args = spec.args.model_json_schema()
        args.pop("title", None)
        for prop in args.get("properties", {}).values():
            prop.pop("title", None)
        variants.append(
            {
                "type": "object",
                "properties": {"tool": {"type": "string", "enum": [name]}, "arguments": args},
                "required": ["tool", "arguments"],
                "additionalProperties": False,
            }
        )
    return variants[0] if len(variants) == 1 else {"anyOf": variants}
