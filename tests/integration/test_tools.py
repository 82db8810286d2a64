"""OpenAI tool calling through the unmodified `openai` SDK, on the default model with its tool-aware chat
template and vLLM's `xlam` tool parser: every tool_choice form streamed and not, parallel_tool_calls, the
round trip (call -> role "tool" result -> answer), structured output parsed into a pydantic model, and the
checks a broken conversation or tool definition gets.

The 135M model does not decide on its own to call a tool (under "auto" it answers in words); the "auto" case
constrains its output to its own call format with vLLM's structured outputs, so what is tested is the app's
part: the template, the parser that turns the model's text into OpenAI tool calls, and the stream's shape."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel, Field

from serve_app.errors import status_of

pytestmark = pytest.mark.app

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                   "required": ["city"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
# The default model's call format (its chat template; xlam's parser reads it), one call to get_weather.
CALL_FORMAT = r'<tool_call>\[\n\{"name": "get_weather", "arguments": \{"city": "[A-Z][a-z]{1,12}"\}\}\n\]</tool_call>'
FORMS = {
    "auto": ("auto", {"structured_outputs": {"regex": CALL_FORMAT}}),
    "required": ("required", None),
    "named": ({"type": "function", "function": {"name": "get_weather"}}, None),
}


def _streamed(stream) -> tuple[str, list[dict], str | None]:
    """Content, tool calls (assembled from their deltas by index) and finish reason of a chat stream."""
    content, calls, finish = [], {}, None
    for chunk in stream:
        for choice in chunk.choices:
            delta = choice.delta
            content.append(delta.content or "")
            for part in delta.tool_calls or ():
                call = calls.setdefault(part.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = call["id"] or part.id
                call["name"] += part.function.name or "" if part.function else ""
                call["arguments"] += part.function.arguments or "" if part.function else ""
            finish = choice.finish_reason or finish
    return "".join(content), [calls[i] for i in sorted(calls)], finish


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("form", list(FORMS))
def test_each_tool_choice_form_calls_the_tool(client, model_name, form, stream):
    choice, extra = FORMS[form]
    args = dict(model=model_name, messages=ASK, tools=[WEATHER, TIME], tool_choice=choice, max_tokens=60,
                temperature=0, parallel_tool_calls=False, extra_body=extra)
    if stream:
        _, calls, finish = _streamed(client.chat.completions.create(stream=True, **args))
    else:
        r = client.chat.completions.create(**args)
        finish = r.choices[0].finish_reason
        calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                 for c in r.choices[0].message.tool_calls]
    assert len(calls) == 1, calls  # parallel_tool_calls=False
    assert calls[0]["name"] == "get_weather" and calls[0]["id"]
    assert set(json.loads(calls[0]["arguments"])) == {"city"}
    # OpenAI's finish reasons: a forced function ends with "stop", a call the model chose with "tool_calls".
    assert finish == ("stop" if form == "named" else "tool_calls")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_tool_choice_none_answers_in_words(client, model_name, stream):
    args = dict(model=model_name, messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=8, temperature=0)
    if stream:
        content, calls, _ = _streamed(client.chat.completions.create(stream=True, **args))
    else:
        message = client.chat.completions.create(**args).choices[0].message
        content, calls = message.content, message.tool_calls or []
    assert content and not calls


def test_required_may_call_several_tools_at_once(client, model_name):
    r = client.chat.completions.create(model=model_name, messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
                                       max_tokens=80, temperature=0)
    calls = r.choices[0].message.tool_calls
    assert calls and all(c.function.name in ("get_weather", "get_time") for c in calls)
    assert len({c.id for c in calls}) == len(calls)


def test_round_trip_call_result_answer(client, http, model_name):
    first = client.chat.completions.create(model=model_name, messages=ASK, tools=[WEATHER], tool_choice="required",
                                           parallel_tool_calls=False, max_tokens=40, temperature=0)
    call = first.choices[0].message.tool_calls[0]
    conversation = [*ASK, first.choices[0].message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"}]
    final = client.chat.completions.create(model=model_name, messages=conversation, tools=[WEATHER], max_tokens=24,
                                           temperature=0)
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls
    # What the model saw: the tools' schema, its own call in its format, the result.
    prompt = http.post("/tokenize", json={"model": model_name, "messages": conversation, "tools": [WEATHER],
                                          "add_generation_prompt": True}).json()
    text = http.post("/detokenize", json={"model": model_name, "tokens": prompt["tokens"]}).json()["prompt"]
    assert '<tools>[{"type": "function", "function": {"name": "get_weather"' in text
    assert '<tool_call>[\n{"name": "get_weather", "arguments": ' + call.function.arguments in text
    assert "<tool_response>\n18 C and sunny\n</tool_response>" in text


class City(BaseModel):
    name: str = Field(max_length=24)
    country: str = Field(max_length=24)


def test_parse_into_a_pydantic_model(client, model_name):
    r = client.chat.completions.parse(model=model_name, response_format=City, max_tokens=100, temperature=0,
                                      messages=[{"role": "user", "content": "Name a city in France."}])
    assert isinstance(r.choices[0].message.parsed, City)
    # A strict function tool built from a pydantic model, parsed back into it.
    r = client.chat.completions.parse(model=model_name, tools=[openai.pydantic_function_tool(City)],
                                      tool_choice="required", parallel_tool_calls=False, max_tokens=100, temperature=0,
                                      messages=[{"role": "user", "content": "Name a city in France."}])
    assert isinstance(r.choices[0].message.tool_calls[0].function.parsed_arguments, City)


@pytest.mark.parametrize("case, body, param", [
    ("invalid-schema", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}]},
     "tools[0].function.parameters"),
    ("absent-tool", {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ("tool-without-call", {"tools": [WEATHER], "messages": [*ASK, {"role": "tool", "tool_call_id": "x", "content": "r"}]},
     "messages[1].tool_call_id"),
    ("oversized", {"tools": [{"type": "function", "function": {"name": f"f{i}", "description": "d" * 1000}}
                             for i in range(100)]}, "tools"),
])
def test_bad_tools_get_400(http, model_name, case, body, param):
    r = http.post("/v1/chat/completions", json={"model": model_name, "messages": ASK, "max_tokens": 4, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and isinstance(error["code"], str)


def test_errors_carry_openai_string_codes(client, model_name):
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="no-such-model", messages=ASK, max_tokens=2)
    assert exc.value.code == "model_not_found" and exc.value.type == "not_found_error"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "word " * 3000}],
                                       max_tokens=2)
    assert exc.value.code == "context_length_exceeded" and status_of(exc.value.body) == 400
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=model_name, messages=ASK, max_tokens=2, temperature=7)
    assert exc.value.code == "invalid_value" and exc.value.param == "temperature"
