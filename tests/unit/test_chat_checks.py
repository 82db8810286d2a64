"""The ingress's checks of a chat request's conversation and tools (OpenAI's rules), on vLLM's request model."""

from __future__ import annotations

import pytest

from serve_app.config.settings import AppSettings
from serve_app.errors import InvalidRequest
from serve_app.ingress.chat_checks import check_messages, check_tools
from serve_app.protocol.openai import ChatCompletionRequest

pytestmark = pytest.mark.unit

SETTINGS = AppSettings.model_validate({"ingress": {"max_tools": 3, "max_tools_bytes": 2048}})
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def _call(i: str, name: str = "get_weather") -> dict:
    return {"id": i, "type": "function", "function": {"name": name, "arguments": '{"city": "Paris"}'}}


def _request(messages, tools=None) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": messages, "tools": tools})


def _param(exc: pytest.ExceptionInfo) -> str:
    return exc.value.param


def test_a_round_trip_passes():
    req = _request([{"role": "user", "content": "weather?"},
                    {"role": "assistant", "content": None, "tool_calls": [_call("a"), _call("b")]},
                    {"role": "tool", "tool_call_id": "b", "content": "18 C"},
                    {"role": "tool", "tool_call_id": "a", "content": "18 C"},
                    {"role": "user", "content": "and tomorrow?"}], [WEATHER])
    check_messages(req, SETTINGS)
    check_tools(req, SETTINGS)
    assert isinstance(req.messages[1]["tool_calls"], list)  # materialized: picklable to the replica


@pytest.mark.parametrize("messages, param", [
    ([{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "x", "content": "r"}], "messages[1].tool_call_id"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [_call("a")]},
      {"role": "tool", "tool_call_id": "a", "content": "r"}, {"role": "tool", "tool_call_id": "a", "content": "r"}],
     "messages[3].tool_call_id"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [_call("a"), _call("b")]},
      {"role": "tool", "tool_call_id": "a", "content": "r"}, {"role": "user", "content": "x"}], "messages[3]"),
    ([], "messages"),
])
def test_a_broken_conversation_is_refused(messages, param):
    with pytest.raises(InvalidRequest) as exc:
        check_messages(_request(messages), SETTINGS)
    assert _param(exc) == param


def _fn(name="f", parameters=None, description=None):
    function = {"name": name, "parameters": parameters or {"type": "object"}}
    if description:
        function["description"] = description
    return {"type": "function", "function": function}


@pytest.mark.parametrize("tools, param", [
    ([_fn(parameters={"type": "nonsense"})], "tools[0].function.parameters"),
    ([_fn(parameters={"type": "object", "properties": 5})], "tools[0].function.parameters"),
    ([_fn(parameters={"type": "string"})], "tools[0].function.parameters"),
    ([_fn("a b/c")], "tools[0].function.name"),
    ([_fn("x" * 65)], "tools[0].function.name"),
    ([_fn("f"), _fn("f")], "tools[1].function.name"),
    ([_fn(f"f{i}") for i in range(4)], "tools"),
    ([_fn(description="x" * 3000)], "tools"),
])
def test_a_bad_tool_is_refused(tools, param):
    with pytest.raises(InvalidRequest) as exc:
        check_tools(_request([{"role": "user", "content": "hi"}], tools), SETTINGS)
    assert _param(exc) == param


def test_tools_without_parameters_pass():
    check_tools(_request([{"role": "user", "content": "hi"}], [{"type": "function", "function": {"name": "now"}}]),
                SETTINGS)


def test_the_openapi_schema_states_the_fixed_limits():
    from serve_app.ingress.fastapi_app import create_app

    schemas = create_app().openapi()["components"]["schemas"]
    chat = schemas["ChatCompletionRequest"]["properties"]
    assert chat["messages"]["minItems"] == 1
    number = next(a for a in chat["temperature"]["anyOf"] if a["type"] == "number")
    assert (number["minimum"], number["maximum"]) == (0, 2)
    assert next(a for a in chat["max_tokens"]["anyOf"] if a["type"] == "integer")["minimum"] == 1
    prompt = schemas["CompletionRequest"]["properties"]["prompt"]["anyOf"]
    assert next(a for a in prompt if a["type"] == "string")["minLength"] == 1
