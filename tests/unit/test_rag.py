"""RAG's plan and merge, and the prompt configuration.

Invariants: in the parallel plan the search and the draft are in flight at the same time (proved by each
branch waiting for the other to start, which would deadlock one after the other); a slow or failing vector
tier degrades the answer instead of failing it, while the request's own errors still fail it; the sources
fit the context budget, appear once and carry their citation; prompt templates with unknown or missing
placeholders are refused when the configuration loads.

The LLM and the search are scripted callables here: the plan's ordering and the vector tier's faults are
what is under test, and the real parts are exercised end to end in tests/integration/test_rag_agent.py.
"""

import asyncio

import pytest
from pydantic import ValidationError

from serve_app.config.loader import ConfigError, validate_app_args
from serve_app.config.prompts import PromptSettings
from serve_app.config.settings import RagSettings
from serve_app.errors import InvalidRequest, ServiceUnavailable
from serve_app.rag.pipeline import RagPipeline

pytestmark = pytest.mark.unit

HITS = [
    {"document_id": "a", "chunk_id": "a1", "text": "Paris is the capital of France; the tower is tall.", "score": 0.9},
    {"document_id": "a", "chunk_id": "a1", "text": "duplicate", "score": 0.8},
    {"document_id": "b", "chunk_id": "b1", "text": "Rome is the capital of Italy.", "score": 0.5},
]


class Rendezvous:
    """Each branch signals that it started and waits for the other one."""

    def __init__(self):
        self.search_started, self.draft_started = asyncio.Event(), asyncio.Event()


class FakeLLM:
    def __init__(self, rv=None, answer="Paris is the capital [1]. Its tower is tall."):
        self.rv, self.answer, self.prompts = rv, answer, []

    async def complete(self, messages, max_tokens, temperature=0.0, json_schema=None):
        self.prompts.append(messages)
        if self.rv is not None and len(self.prompts) == 1:
            self.rv.draft_started.set()
            await asyncio.wait_for(self.rv.search_started.wait(), 2)
            return "a draft"
        return self.answer

    async def stream(self, messages, max_tokens, temperature=0.0):
        async def deltas():
            for word in self.answer.split(" "):
                yield word + " "

        self.prompts.append(messages)
        return deltas()


def _search(rv=None, fail=None, delay=0.0):
    async def search(q, k, f):
        if rv is not None:
            rv.search_started.set()
            await asyncio.wait_for(rv.draft_started.wait(), 2)
        if delay:
            await asyncio.sleep(delay)
        if fail is not None:
            raise fail
        return HITS[:k]

    return search


async def _answer(pipe, plan="parallel", top_k=3):
    prep = await pipe.prepare("What is the capital of France?", top_k, None, plan)
    return await pipe.answer(prep, 64), prep


def test_parallel_plan_runs_draft_and_search_at_the_same_time():
    rv = Rendezvous()
    llm = FakeLLM(rv)
    out, prep = asyncio.run(_answer(RagPipeline(llm, _search(rv), RagSettings(), PromptSettings())))
    assert not out["degraded"] and prep.draft == "a draft"
    assert out["timings"]["retrieval_ms"] is not None and out["timings"]["draft_ms"] is not None
    # The final prompt merges both branches.
    final = llm.prompts[-1][-1]["content"]
    assert "a draft" in final and "[1] Paris" in final and "[2] Rome" in final


def test_sequential_plan_runs_one_after_the_other():
    # The search runs first and never sees the draft start: it gives up waiting, so the answer degrades.
    rv = Rendezvous()
    pipe = RagPipeline(FakeLLM(rv), _search(rv), RagSettings(retrieval_timeout_s=5), PromptSettings())
    out, prep = asyncio.run(_answer(pipe, plan="sequential"))
    assert out["degraded"] and prep.draft == "a draft"


@pytest.mark.parametrize("fault", ["slow", "down"])
def test_vector_tier_faults_degrade_the_answer(fault):
    search = _search(delay=5) if fault == "slow" else _search(fail=ServiceUnavailable("store down"))
    llm = FakeLLM()
    out, _ = asyncio.run(_answer(RagPipeline(llm, search, RagSettings(retrieval_timeout_s=0.1), PromptSettings())))
    assert out["degraded"] and out["sources"] == []
    assert ("0.1s" if fault == "slow" else "store down") in out["degraded_reason"]
    assert PromptSettings().rag_no_sources in llm.prompts[-1][-1]["content"]


def test_the_requests_own_error_is_not_a_degradation():
    pipe = RagPipeline(FakeLLM(), _search(fail=InvalidRequest("bad filter", "filter")), RagSettings(), PromptSettings())
    with pytest.raises(InvalidRequest):
        asyncio.run(_answer(pipe))


def test_sources_are_deduplicated_budgeted_and_cited():
    pipe = RagPipeline(FakeLLM(), _search(), RagSettings(max_context_chars=100), PromptSettings())
    out, prep = asyncio.run(_answer(pipe))
    assert [s["chunk_id"] for s in out["sources"]] == ["a1", "b1"]
    assert sum(len(h["text"]) for h in prep.hits) <= 100
    by_index = {s["index"]: s for s in out["sources"]}
    assert by_index[1]["cited"] and by_index[1]["cited_by"] == "marker"
    assert not by_index[2]["cited"]


def test_stream_sends_sources_then_tokens_then_timings():
    async def run():
        pipe = RagPipeline(FakeLLM(), _search(), RagSettings(), PromptSettings())
        prep = await pipe.prepare("q?", 2, None)
        return [e async for e in await pipe.open_stream(prep, 16)]

    events = asyncio.run(run())
    kinds = [e["type"] for e in events]
    assert kinds[0] == "sources" and kinds[-1] == "done" and set(kinds[1:-1]) == {"token"}
    assert events[-1]["timings"]["ttft_ms"] is not None


@pytest.mark.parametrize(
    "override, message",
    [({"rag_draft_user": "{q}"}, "unknown placeholder"), ({"rag_answer_user": "{sources}"}, "missing placeholder"),
     ({"agent_system": "{tools} {"}, "not a valid template"), ({"agent_task": "{0} {task}"}, "must be named")],
)
def test_bad_prompt_templates_are_refused(override, message):
    with pytest.raises(ValidationError, match=message):
        PromptSettings(**override)


def test_config_refuses_unknown_tools_and_names_the_field():
    with pytest.raises(ConfigError, match=r"args\.agent.*unknown tool\(s\) \['shell'\]"):
        validate_app_args({"agent": {"tools": ["shell", "final_answer"]}})
    with pytest.raises(ConfigError, match="final_answer"):
        validate_app_args({"agent": {"tools": ["calculator"]}})
    with pytest.raises(ConfigError, match=r"args\.prompts"):
        validate_app_args({"prompts": {"rag_source": "{n}"}})
