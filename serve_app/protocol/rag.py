"""POST /v1/rag and POST /v1/agent: request/response models. Limits that depend on configuration (top_k,
max_steps, max_tokens) are checked by the routes against the settings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator

from serve_app.protocol.retrieval import MetaKey, MetaValue, SearchMode


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty or whitespace")
    return v


class RagRequest(_Request):
    question: StrictStr = Field(..., min_length=1, max_length=4000, description="The question to answer.")
    top_k: int | None = Field(None, description="Sources to retrieve (1..rag.max_top_k; default rag.default_top_k).")
    filter: dict[MetaKey, MetaValue] | None = Field(None, description="Metadata equality filter on the sources.")
    stream: StrictBool = Field(False, description="Server-sent events: sources, then tokens, then timings.")
    max_tokens: int | None = Field(None, description="Answer length bound (1..rag.answer_max_tokens).")
    mode: SearchMode | None = Field(None, description="How sources are searched: 'dense', 'keyword' or 'hybrid' "
                                    "(default: vector.search_mode).")
    # Benchmark options (vLLM's sampling fields of the same names): answers of a fixed length, so that RAG can
    # be compared with another pipeline per answer rather than per answer length.
    min_tokens: int | None = Field(None, ge=0, description="Benchmark option: generate at least this many tokens "
                                   "(at most max_tokens).")
    ignore_eos: StrictBool = Field(False, description="Benchmark option: keep generating past the end of the "
                                   "answer, up to max_tokens.")

    _q = field_validator("question")(_not_blank)


class RagSource(BaseModel):
    index: int = Field(..., description="The number the answer cites it by, as in [1].")
    document_id: str
    chunk_id: str = Field(..., description="The source's best-scoring chunk.")
    chunk_ids: list[str] = Field(..., description="Its chunks: consecutive chunks of one document are one source.")
    page: int | None = Field(None, description="The page of its best chunk, in a PDF.")
    section: str | None = Field(None, description="The heading path of its best chunk, in an HTML, Word or "
                                "Markdown file.")
    score: float
    cited: bool = Field(..., description="Whether the answer cites this source.")
    cited_by: Literal["marker", "overlap"] | None = Field(
        ..., description="'marker': the answer has its [n]; 'overlap': it shares 3+ content words with the answer."
    )


class RagTimings(BaseModel):
    retrieval_ms: float | None = Field(..., description="The search (None when it was dropped).")
    llm_ms: float = Field(..., description="The answer's generation.")
    ttft_ms: float | None = Field(None, description="Time to the first answer token (streaming).")
    total_ms: float


class RagUsage(BaseModel):
    prompt_tokens: int = Field(..., description="Tokens of the prompt the engine answered (sources included).")
    completion_tokens: int
    total_tokens: int


class RagResponse(BaseModel):
    object: Literal["rag.answer"] = "rag.answer"
    answer: str
    sources: list[RagSource]
    timings: RagTimings
    degraded: bool = Field(..., description="True when the answer was given without retrieval.")
    degraded_reason: str | None = None
    mode: SearchMode | None = Field(..., description="The search mode the request named (None: vector.search_mode).")
    prompts_version: str
    usage: RagUsage | None = Field(None, description="The answer's token counts (None: the engine gave none).")
    release: str


class AgentRequest(_Request):
    task: StrictStr = Field(..., min_length=1, max_length=4000, description="What the agent should do.")
    max_steps: int | None = Field(None, description="Step bound (1..agent.max_steps; default agent.default_max_steps).")
    stream: StrictBool = Field(False, description="Server-sent events: one per step, then the answer.")

    _t = field_validator("task")(_not_blank)


class AgentStep(BaseModel):
    tool: str | None = Field(..., description="The tool called (None when the model's output was not a call).")
    input: dict[str, Any] | None
    output: str
    ms: float = Field(..., description="The whole step: the LLM call that chose the tool, and the tool.")
    tool_ms: float | None = Field(None, description="Time in the tool itself (None when no tool ran).")
    status: Literal["ok", "error", "refused"] = Field(
        ..., description="'error': the tool failed or timed out; 'refused': the tool is not allowed."
    )


class AgentResponse(BaseModel):
    object: Literal["agent.answer"] = "agent.answer"
    answer: str | None
    finish_reason: Literal["final_answer", "max_steps", "deadline"]
    steps: list[AgentStep]
    sources: list[dict[str, Any]]
    prompts_version: str
    release: str
