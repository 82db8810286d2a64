"""The agent's tools and loop are bounded and refuse what is not allowed.

Invariants: the calculator evaluates arithmetic and nothing else (no names, calls or attributes reach any
evaluator); the tool-call schema offers exactly the allowed tools; the loop never runs a tool outside the
allow-list and records the refusal as a step; a failing or slow tool becomes an error observation and the
loop goes on; the step bound, the final-answer-only last step and the deadline hold.

The loop is driven here by a scripted completer standing in for the LLM: it produces calls the real engine
cannot be made to produce on demand (guided decoding keeps the real model inside the allow-list).
"""

import asyncio
import json

import pytest

from serve_app.agent.calculator import CalculatorError, calculate
from serve_app.agent.loop import AgentLoop, ToolResult
from serve_app.agent.tools import REGISTRY, call_schema
from serve_app.config.names import DEFAULT_TOOLS
from serve_app.config.prompts import PromptSettings
from serve_app.config.settings import AgentSettings

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "expr, value",
    [("2+3*4", 14), ("(1+2)**3", 27), ("7/2", 3.5), ("2^10", 1024), ("-3 % 2", 1), ("17 // 5", 3), ("1.5e3 - 1", 1499.0)],
)
def test_calculator_arithmetic(expr, value):
    assert calculate(expr) == value


@pytest.mark.parametrize(
    "expr",
    ["__import__('os').system('true')", "x + 1", "(1).__class__", "[1, 2]", "lambda: 1", "1 if 1 else 2", "1/0",
     "9**9**9", "10**400", "2 ** 0.5 * (-1) ** 0.5", "", "1" * 300, "'a' * 3", "abs(-1)"],
)
def test_calculator_refuses_everything_else(expr):
    with pytest.raises(CalculatorError):
        calculate(expr)


def test_schema_offers_exactly_the_allowed_tools():
    schema = call_schema(("calculator", "final_answer"))
    names = [v["properties"]["tool"]["enum"] for v in schema["anyOf"]]
    assert names == [["calculator"], ["final_answer"]]
    single = call_schema(("final_answer",))
    assert single["properties"]["tool"]["enum"] == ["final_answer"]
    assert single["properties"]["arguments"]["required"] == ["answer"]


def test_every_registered_tool_has_bounded_string_arguments():
    # Guided decoding can only stop a string at its maxLength: unbounded strings could exhaust the step budget.
    for spec in REGISTRY.values():
        for name, prop in spec.args.model_json_schema()["properties"].items():
            if prop.get("type") == "string":
                assert prop.get("maxLength", 10**9) <= 256, (spec.name, name)


class Scripted:
    """Replies with the next scripted output and records the schema each call was constrained to."""

    def __init__(self, outputs):
        self.outputs = list(outputs)
        self.schemas = []
        self.messages = []
        self.sessions = []

    async def complete(self, messages, max_tokens, temperature=0.0, json_schema=None, *, session=None):
        self.schemas.append(json_schema)
        self.sessions.append(session)
        self.messages.append(list(messages))
        out = self.outputs.pop(0)
        if isinstance(out, float):
            await asyncio.sleep(out)
            return json.dumps({"tool": "final_answer", "arguments": {"answer": "late"}})
        return out if isinstance(out, str) else json.dumps(out)


def _call(tool, **args):
    return {"tool": tool, "arguments": args}


async def _run(llm, tools, max_steps=4, **settings):
    loop = AgentLoop(llm, tools, AgentSettings(**settings), PromptSettings())
    return [e async for e in loop.run("do the task", max_steps)]


def test_loop_refuses_tools_outside_the_allow_list():
    ran = []

    async def delete(args):
        ran.append(args)
        return ToolResult("deleted")

    async def calc(args):
        return ToolResult(str(calculate(args.expression)))

    llm = Scripted([_call("delete_document", document_id="x"), _call("rm_rf"), _call("calculator", expression="6*7"),
                    _call("final_answer", answer="42")])
    events = asyncio.run(_run(llm, {"calculator": calc, "delete_document": delete, "search_documents": calc,
                                    "get_document": calc}))
    assert [e["type"] for e in events] == ["start", "step", "step", "step", "step", "answer"]
    steps = events[-1]["steps"]
    assert [s["status"] for s in steps] == ["refused", "refused", "ok", "ok"]
    assert steps[0]["tool"] == "delete_document" and "not an allowed tool" in steps[0]["output"]
    assert steps[2]["output"] == "42"
    assert ran == []
    assert events[-1]["answer"] == "42" and events[-1]["finish_reason"] == "final_answer"


def test_failing_and_slow_tools_become_observations():
    async def boom(args):
        raise RuntimeError("store down")

    async def slow(args):
        await asyncio.sleep(10)

    async def calc(args):
        return ToolResult("1")

    llm = Scripted([_call("search_documents", query="q"), _call("get_document", document_id="d"), "{not json",
                    _call("calculator", expression="1"), _call("final_answer", answer="done")])
    events = asyncio.run(_run(llm, {"search_documents": boom, "get_document": slow, "calculator": calc},
                              max_steps=5, tool_timeout_s=0.2))
    steps = events[-1]["steps"]
    assert [s["status"] for s in steps] == ["error", "error", "error", "ok", "ok"]
    assert "RuntimeError" in steps[0]["output"]
    assert "did not answer" in steps[1]["output"]
    assert steps[2]["tool"] is None
    # Each observation went back to the model.
    assert "RuntimeError" in llm.messages[1][-1]["content"]


def test_invalid_arguments_are_refused_before_running():
    async def calc(args):
        raise AssertionError("must not run")

    llm = Scripted([_call("calculator", expression=""), _call("calculator"), _call("final_answer", answer="x")])
    events = asyncio.run(_run(llm, {"calculator": calc, "search_documents": calc, "get_document": calc}))
    assert [s["status"] for s in events[-1]["steps"]] == ["error", "error", "ok"]
    assert "invalid arguments" in events[-1]["steps"][0]["output"]


def test_steps_are_bounded_and_the_last_one_must_answer():
    async def calc(args):
        return ToolResult("1")

    llm = Scripted([_call("calculator", expression="1")] * 2 + [_call("final_answer", answer="a")])
    events = asyncio.run(_run(llm, {"calculator": calc, "search_documents": calc, "get_document": calc}, max_steps=3))
    assert len(events[-1]["steps"]) == 3
    assert llm.schemas[0] == call_schema(DEFAULT_TOOLS)
    assert llm.schemas[-1] == call_schema(("final_answer",))
    assert events[-1]["finish_reason"] == "final_answer"
    # Every LLM call of one run is one session (the router keeps it on one replica); another run is another.
    assert len(set(llm.sessions)) == 1 and llm.sessions[0]
    again = Scripted([_call("final_answer", answer="b")])
    asyncio.run(_run(again, {"calculator": calc, "search_documents": calc, "get_document": calc}))
    assert again.sessions[0] and again.sessions[0] != llm.sessions[0]


def test_the_deadline_ends_a_run():
    async def calc(args):
        return ToolResult("1")

    llm = Scripted([5.0])
    events = asyncio.run(_run(llm, {"calculator": calc, "search_documents": calc, "get_document": calc},
                              deadline_s=0.2))
    assert events[-1]["finish_reason"] == "deadline" and events[-1]["answer"] is None


def test_sources_are_collected_once():
    async def search(args):
        return ToolResult("p", [{"document_id": "d", "chunk_id": "c1", "score": 0.5}])

    llm = Scripted([_call("search_documents", query="a"), _call("search_documents", query="b"),
                    _call("final_answer", answer="x")])
    events = asyncio.run(_run(llm, {"search_documents": search, "get_document": search, "calculator": search}))
    assert events[-1]["sources"] == [{"document_id": "d", "chunk_id": "c1", "score": 0.5}]


def test_a_tool_without_implementation_is_refused_at_start():
    with pytest.raises(ValueError, match="no implementation"):
        AgentLoop(Scripted([]), {}, AgentSettings(), PromptSettings())


def test_every_tool_name_the_configuration_accepts_has_one_spec():
    from serve_app.agent.tools import REGISTRY
    from serve_app.config.names import TOOLS

    assert sorted(REGISTRY) == sorted(TOOLS) and all(REGISTRY[n].name == n for n in TOOLS)
