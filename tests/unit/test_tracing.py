"""Span trees of a RAG answer and an agent run, recorded with the OpenTelemetry SDK's in-memory exporter.

The LLM and the tools are the scripted fakes of test_rag.py / test_agent.py; the LLM client's own span is
exercised with a fake handle. Across deployments the spans are linked by Ray Serve's context propagation,
which tests/integration/test_observability.py checks on the running app.
"""

import asyncio
import json

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from serve_app.agent.loop import AgentLoop, ToolResult
from serve_app.config.prompts import PromptSettings
from serve_app.config.settings import AgentSettings, IngressSettings, RagSettings
from serve_app.llm.client import LLMClient
from serve_app.observability.tracing import span, trace_id
from serve_app.protocol.retrieval import SearchHit
from serve_app.rag.pipeline import RagPipeline
from tests.fakes.handles import StreamResponse

pytestmark = pytest.mark.unit

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def provider():
    # The global provider can be set once per process; later modules record into memory too (harmless).
    p = TracerProvider()
    p.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(p)
    yield p


@pytest.fixture(autouse=True)
def clear():
    EXPORTER.clear()


def _tree(spans):
    by_id = {s.context.span_id: s for s in spans}
    children = {}
    for s in spans:
        parent = s.parent.span_id if s.parent is not None and s.parent.span_id in by_id else None
        children.setdefault(parent, []).append(s.name)
    return {k if k is None else by_id[k].name: sorted(v) for k, v in children.items()}


class LLM:
    def __init__(self, outputs=None):
        self.outputs = list(outputs or [])

    async def complete(self, messages, max_tokens, temperature=0.0, json_schema=None, usage=None, **options):
        if self.outputs:
            out = self.outputs.pop(0)
            return out if isinstance(out, str) else json.dumps(out)
        return "Paris is the capital [1]."


def test_a_rag_answer_is_one_trace_with_the_retrieval_under_prepare():
    async def search(q, k, f, mode, tenant):
        return [SearchHit(document_id="a", chunk_id="a1", position=0, text="Paris is the capital of France.",
                          score=0.9, metadata={})]

    async def run():
        rag = RagPipeline(LLM(), search, RagSettings(), PromptSettings())
        with span("POST /v1/rag") as root:
            prep = await rag.prepare("capital of France?", 2, None)
            await rag.answer(prep, 16)
        return trace_id(root)

    tid = asyncio.run(run())
    spans = EXPORTER.get_finished_spans()
    assert {format(s.context.trace_id, "032x") for s in spans} == {tid}
    tree = _tree(spans)
    assert tree[None] == ["POST /v1/rag"]
    assert tree["POST /v1/rag"] == ["rag.answer", "rag.prepare"]
    assert tree["rag.prepare"] == ["rag.retrieval"]
    retrieval = next(s for s in spans if s.name == "rag.retrieval")
    assert retrieval.attributes["hits"] == 1 and retrieval.attributes["top_k"] == 2


def test_an_agent_run_has_a_step_span_per_call_and_a_tool_span_per_tool():
    async def calc(args):
        return ToolResult("4")

    llm = LLM([{"tool": "calculator", "arguments": {"expression": "2+2"}},
               {"tool": "final_answer", "arguments": {"answer": "4"}}])

    async def run():
        tools = {"calculator": calc, "search_documents": calc, "get_document": calc}
        loop = AgentLoop(llm, tools, AgentSettings(), PromptSettings())
        with span("POST /v1/agent"):
            return [e async for e in loop.run("2+2?", 4)]

    events = asyncio.run(run())
    assert events[-1]["answer"] == "4"
    spans = EXPORTER.get_finished_spans()
    assert len({s.context.trace_id for s in spans}) == 1
    tree = _tree(spans)
    # Named as OpenTelemetry's GenAI conventions name an agent run and a tool execution.
    run_name = "invoke_agent serve_app.agent"
    assert tree["POST /v1/agent"] == [run_name]
    assert tree[run_name] == ["agent.step", "agent.step"]
    assert sorted(n for k, v in tree.items() if k == "agent.step" for n in v) == ["execute_tool calculator"]
    tool = next(s for s in spans if s.name == "execute_tool calculator")
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool" and tool.attributes["gen_ai.tool.name"] == "calculator"
    assert tool.attributes["status"] == "ok"
    run_span = next(s for s in spans if s.name == run_name)
    assert run_span.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert run_span.attributes["finish_reason"] == "final_answer" and run_span.attributes["steps"] == 2


class Handle:
    """The LLM deployment handle's interface as LLMClient uses it: generate.options(stream=True).remote()."""

    def __init__(self):
        self.generate = self

    def options(self, **kw):
        return self

    def remote(self, kind, request):
        return StreamResponse([{"stream": False, "body": {
            "id": "c1", "model": "m", "usage": {"prompt_tokens": 5, "completion_tokens": 1},
            "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}}])




def test_every_llm_call_is_a_span():
    async def run():
        client = LLMClient(Handle(), "m", IngressSettings())
        with span("root"):
            return await client.complete([{"role": "user", "content": "x"}], 8, json_schema={"type": "object"})

    assert asyncio.run(run()) == "hi"
    (llm,) = [s for s in EXPORTER.get_finished_spans() if s.name == "chat m"]
    # OpenTelemetry's GenAI conventions: operation, model, request and usage.
    assert llm.kind == trace.SpanKind.CLIENT and llm.attributes["structured"] is True
    assert {k: llm.attributes[k] for k in ("gen_ai.operation.name", "gen_ai.request.model", "gen_ai.request.max_tokens",
                                           "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens")} == \
        {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m", "gen_ai.request.max_tokens": 8,
         "gen_ai.usage.input_tokens": 5, "gen_ai.usage.output_tokens": 1}
    assert llm.attributes["gen_ai.response.finish_reasons"] == ("stop",)
