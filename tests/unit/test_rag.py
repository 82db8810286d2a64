"""RAG's retrieval, source merging and prompt, and the prompt configuration.

Invariants: the search gets the request's mode; a slow or failing vector tier degrades the answer instead of
failing it, while the request's own errors (400, 409) still fail it; consecutive chunks of one document become one
source with their overlap written once, sources are ordered best first, fit the context budget, appear once and
carry their citation; the prompt puts what every request shares first; prompt templates with unknown or missing
placeholders are refused when the configuration loads, and the removed draft setting is refused by name.

The LLM and the search are scripted callables here: the vector tier's faults are what is under test, and the
real parts are exercised end to end in tests/integration/test_rag_agent.py.
"""

import asyncio

import pytest
from pydantic import ValidationError

from serve_app.config.loader import ConfigError, validate_app_args
from serve_app.config.prompts import PromptSettings
from serve_app.config.settings import RagSettings
from serve_app.errors import Conflict, InvalidRequest, ServiceUnavailable
from serve_app.protocol.retrieval import SearchHit
from serve_app.rag.pipeline import RagPipeline, merge_hits

pytestmark = pytest.mark.unit


def _hit(document_id, chunk_id, position, text, score):
    return SearchHit(document_id=document_id, chunk_id=chunk_id, position=position, text=text, score=score,
                     metadata={})


HITS = [
    _hit("a", "a1", 0, "Paris is the capital of France; the tower is tall.", 0.9),
    _hit("a", "a1", 0, "duplicate", 0.8),
    _hit("b", "b1", 3, "Rome is the capital of Italy.", 0.5),
]


class FakeLLM:
    def __init__(self, answer="Paris is the capital [1]. Its tower is tall."):
        self.answer, self.prompts, self.options = answer, [], []

    def _count(self, messages, usage):
        # What the engine reports: token counts once the answer is complete (words stand in for tokens here).
        if usage is not None:
            prompt = sum(len(m["content"].split()) for m in messages)
            usage.update(prompt_tokens=prompt, completion_tokens=len(self.answer.split()),
                         total_tokens=prompt + len(self.answer.split()))

    async def complete(self, messages, max_tokens, temperature=0.0, json_schema=None, usage=None, **options):
        self.prompts.append(messages)
        self.options.append(options)
        self._count(messages, usage)
        return self.answer

    async def stream(self, messages, max_tokens, temperature=0.0, usage=None, **options):
        async def deltas():
            for word in self.answer.split(" "):
                yield word + " "
            self._count(messages, usage)

        self.prompts.append(messages)
        self.options.append(options)
        return deltas()


def _search(fail=None, delay=0.0, hits=HITS, seen=None):
    async def search(q, k, f, mode, tenant):
        if seen is not None:
            seen.append(mode)
        assert tenant == ""  # no keys: the keyless tenant
        if delay:
            await asyncio.sleep(delay)
        if fail is not None:
            raise fail
        return hits[:k]

    return search


async def _answer(pipe, mode=None, top_k=3):
    prep = await pipe.prepare("What is the capital of France?", top_k, None, mode)
    return await pipe.answer(prep, 64), prep


def test_the_search_gets_the_mode_and_the_prompt_puts_the_shared_part_first():
    llm, seen = FakeLLM(), []
    out, _ = asyncio.run(_answer(RagPipeline(llm, _search(seen=seen), RagSettings(), PromptSettings()), "keyword"))
    assert seen == ["keyword"] and out["mode"] == "keyword" and not out["degraded"]
    assert out["timings"]["retrieval_ms"] is not None and out["timings"]["llm_ms"] is not None
    system, user = llm.prompts[-1]
    assert system["content"] == PromptSettings().rag_answer_system
    assert user["content"].startswith("Sources:\n[1] Paris") and "[2] Rome" in user["content"]
    assert user["content"].index("[2] Rome") < user["content"].index("Question: What is the capital")


def test_consecutive_chunks_of_a_document_are_one_source_with_the_overlap_once():
    hits = [
        _hit("d", "d2", 2, "gamma delta epsilon", 0.7),
        _hit("e", "e0", 0, "other text", 0.8),
        _hit("d", "d1", 1, "alpha beta gamma delta", 0.6),
        _hit("d", "d5", 5, "far away", 0.1),
    ]
    sources = merge_hits(hits)
    assert [s.chunk_ids for s in sources] == [["e0"], ["d1", "d2"], ["d5"]]
    assert sources[1].text == "alpha beta gamma delta epsilon"
    assert sources[1].chunk_id == "d2" and sources[1].score == 0.7  # its best chunk's


@pytest.mark.parametrize("error", [InvalidRequest("only stop words", "query"), Conflict("no keyword index")])
def test_the_requests_own_search_errors_fail_the_answer(error):
    with pytest.raises(type(error)):
        asyncio.run(_answer(RagPipeline(FakeLLM(), _search(fail=error), RagSettings(), PromptSettings()), "keyword"))


def test_the_removed_draft_setting_is_refused_by_name_and_false_still_loads():
    with pytest.raises(ValidationError, match="rag.draft was removed"):
        RagSettings(draft=True)
    assert RagSettings(draft=False, draft_max_tokens=48).default_top_k == 4


@pytest.mark.parametrize("fault", ["slow", "down"])
def test_vector_tier_faults_degrade_the_answer(fault):
    search = _search(delay=5) if fault == "slow" else _search(fail=ServiceUnavailable("store down"))
    llm = FakeLLM()
    out, _ = asyncio.run(_answer(RagPipeline(llm, search, RagSettings(retrieval_timeout_s=0.1), PromptSettings())))
    assert out["degraded"] and out["sources"] == []
    assert ("0.1s" if fault == "slow" else "store down") in out["degraded_reason"]
    assert PromptSettings().rag_no_sources in llm.prompts[-1][-1]["content"]


def test_sources_are_deduplicated_budgeted_and_cited():
    pipe = RagPipeline(FakeLLM(), _search(), RagSettings(max_context_chars=100), PromptSettings())
    out, prep = asyncio.run(_answer(pipe))
    assert [s["chunk_id"] for s in out["sources"]] == ["a1", "b1"]
    assert sum(len(h.text) for h in prep.hits) <= 100
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
    [({"rag_answer_system": "{q}"}, "unknown placeholder"), ({"rag_answer_user": "{sources}"}, "missing placeholder"),
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


def test_benchmark_options_reach_the_engine_and_the_answer_reports_its_token_counts():
    """min_tokens / ignore_eos (answers of equal length for benchmarks) go to the engine as they are; the final
    event and the whole answer carry the engine's token counts, the prompt's included."""
    async def run():
        llm = FakeLLM()
        pipe = RagPipeline(llm, _search(), RagSettings(), PromptSettings())
        prep = await pipe.prepare("q?", 2, None)
        events = [e async for e in await pipe.open_stream(prep, 16, min_tokens=16, ignore_eos=True)]
        whole = await pipe.answer(await pipe.prepare("q?", 2, None), 16)
        return llm, events[-1], whole

    llm, done, whole = asyncio.run(run())
    assert llm.options == [{"min_tokens": 16, "ignore_eos": True}, {}]
    prompt, answer = sum(len(m["content"].split()) for m in llm.prompts[0]), len(llm.answer.split())
    assert done["usage"] == {"prompt_tokens": prompt, "completion_tokens": answer, "total_tokens": prompt + answer}
    assert whole["usage"]["prompt_tokens"] == prompt


def test_a_client_side_pipeline_builds_the_same_prompt_from_the_same_hits():
    """The public pieces (sources_of, messages) are what prepare uses: a baseline built from them sends the
    engine exactly the prompt /v1/rag sends."""
    async def run():
        pipe = RagPipeline(FakeLLM(), _search(), RagSettings(max_context_chars=100), PromptSettings())
        return pipe, await pipe.prepare("q?", 4, None)

    pipe, prep = asyncio.run(run())
    assert pipe.messages("q?", pipe.sources_of(list(HITS))) == prep.messages
