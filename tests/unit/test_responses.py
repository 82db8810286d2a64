"""The Responses API in process: the ingress's routes over a real state store (SQLite and PostgreSQL, the
congruence fixture) and an echo LLM handle whose answer is the chat messages it was sent, so what a follow-up's
model call saw is compared byte for byte. Two ingress contexts on one store stand for two replicas. The real
engine, Serve and the openai SDK are in tests/integration/test_responses.py."""

import json
import secrets

import pytest
from fastapi.testclient import TestClient
from openai import omit
from openai._models import construct_type_unchecked
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent

from serve_app.config.settings import AppSettings
from serve_app.ingress.context import IngressContext
from serve_app.ingress.fastapi_app import create_app
from serve_app.ingress.limits import digest
from serve_app.protocol.keys import KeyEntry
from serve_app.protocol.stream import DONE, sse
from serve_app.responses.events import StreamEvents
from serve_app.state.responses import ResponseStore
from tests.fakes.handles import StreamResponse

pytestmark = pytest.mark.unit

TOOLS = [{"type": "function", "name": "weather", "description": "Weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


class EchoLLM:
    """``handle.generate``: answers a chat request with the JSON of its messages (or, when the request names a
    tool, a call of it with fixed arguments)."""

    def __init__(self):
        self.prompts: list[str] = []
        self.sessions: list[str] = []  # the session of each call (the router keeps a session on one replica)

    @property
    def generate(self):
        return self

    def options(self, **options):
        if "session_id" in options:
            self.sessions.append(options["session_id"])
        return self

    def remote(self, kind, req):
        prompt = json.dumps(req.messages, sort_keys=True, default=str)
        self.prompts.append(prompt)
        named = req.tool_choice if isinstance(req.tool_choice, dict) or hasattr(req.tool_choice, "function") else None
        usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": 5, "total_tokens": len(prompt) // 4 + 5}
        if named is not None:
            name = named["function"]["name"] if isinstance(named, dict) else named.function.name
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_{secrets.token_hex(4)}", "type": "function",
                 "function": {"name": name, "arguments": '{"city": "Paris"}'}}]}
            finish = "tool_calls"
        else:
            message, finish = {"role": "assistant", "content": prompt}, "stop"
        if not req.stream:
            body = {"id": "chatcmpl-1", "object": "chat.completion", "model": req.model, "usage": usage,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}]}
            return StreamResponse([{"stream": False, "replica": "r", "body": body}])
        chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
        if message["content"]:
            third = max(1, len(prompt) // 3)
            chunks += [{"choices": [{"index": 0, "delta": {"content": prompt[i:i + third]}}]}
                       for i in range(0, len(prompt), third)]
        for i, call in enumerate(message.get("tool_calls") or ()):
            fn = call["function"]
            chunks.append({"choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": i, "id": call["id"], "type": "function", "function": {"name": fn["name"], "arguments": ""}}]}}]})
            chunks.append({"choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": i, "function": {"arguments": fn["arguments"]}}]}}]})
        chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        chunks.append({"choices": [], "usage": usage})
        return StreamResponse([{"stream": True, "replica": "r"}, *[sse(c) for c in chunks], DONE])


KEYS = {"alice": "sk-alice", "bob": "sk-bob"}


@pytest.fixture
def replicas(engine):
    """Two ingress replicas (contexts) on one store and one echo LLM; API keys of two tenants."""
    settings = AppSettings.model_validate({"vector": {"enabled": False}, "rag": {"enabled": False},
                                           "agent": {"enabled": False}})
    llm = EchoLLM()
    keys = {digest(k): KeyEntry(name=n, sha256=digest(k)) for n, k in KEYS.items()}
    clients = []
    for _ in range(2):
        ctx = IngressContext.build(settings, llms={d: llm for d in settings.served_models()}, api_keys=keys,
                                   state=engine)
        assert ctx.keys.refresh()
        clients.append(TestClient(create_app(ctx)))
    return clients[0], clients[1], llm


def _post(client, body, key="alice", path="/v1/responses"):
    return client.post(path, json=body, headers={"Authorization": f"Bearer {KEYS[key]}"})


def _get(client, path, key="alice"):
    return client.get(path, headers={"Authorization": f"Bearer {KEYS[key]}"})


def test_a_follow_up_on_another_replica_sends_the_model_what_the_same_replica_would(replicas):
    a, b, llm = replicas
    first = _post(a, {"input": "What is the weather in Paris?", "tools": TOOLS,
                      "tool_choice": {"type": "function", "name": "weather"}, "instructions": "Be brief."})
    assert first.status_code == 200, first.text
    call = first.json()["output"][0]
    assert call["type"] == "function_call" and call["name"] == "weather"
    follow = {"previous_response_id": first.json()["id"], "tools": TOOLS,
              "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "18 C, sunny"}]}
    same = _post(a, follow)
    other = _post(b, follow)
    assert same.status_code == other.status_code == 200, other.text
    assert llm.prompts[-1] == llm.prompts[-2]  # byte-identical, whichever replica
    messages = json.loads(llm.prompts[-1])
    # The previous turn's instructions are not carried over; its call and the call's output are.
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["id"] == call["call_id"] and messages[2]["content"] == "18 C, sunny"
    items = _get(b, f"/v1/responses/{other.json()['id']}/input_items?order=asc").json()["data"]
    assert [i["type"] for i in items] == ["message", "function_call", "function_call_output"]
    assert other.json()["usage"]["input_tokens"] > first.json()["usage"]["input_tokens"]


def test_create_retrieve_list_delete_and_store_false(replicas):
    a, b, _ = replicas
    made = _post(a, {"input": [{"role": "user", "content": "hello"}], "metadata": {"k": "v"}, "max_output_tokens": 8})
    assert made.status_code == 200
    rid = made.json()["id"]
    assert _get(b, f"/v1/responses/{rid}").json() == made.json()
    assert _get(b, f"/v1/responses/{rid}/input_items").json()["data"][0]["content"][0]["text"] == "hello"
    assert b.delete(f"/v1/responses/{rid}", headers={"Authorization": "Bearer sk-alice"}).json()["deleted"] is True
    gone = _get(a, f"/v1/responses/{rid}")
    assert gone.status_code == 404 and "No response found" in gone.json()["error"]["message"]
    unstored = _post(a, {"input": "x", "store": False}).json()["id"]
    missing = _post(b, {"input": "y", "previous_response_id": unstored})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "previous_response_id"


def test_another_tenant_sees_nothing(replicas):
    a, b, _ = replicas
    rid = _post(a, {"input": "mine"}).json()["id"]
    conv = _post(a, {"metadata": {"topic": "t"}}, path="/v1/conversations").json()["id"]
    for path in (f"/v1/responses/{rid}", f"/v1/responses/{rid}/input_items", f"/v1/conversations/{conv}",
                 f"/v1/conversations/{conv}/items"):
        assert _get(b, path, key="bob").status_code == 404, path
    assert _post(b, {"input": "x", "previous_response_id": rid}, key="bob").status_code == 404
    assert _post(b, {"input": "x", "conversation": conv}, key="bob").status_code == 404
    assert b.delete(f"/v1/responses/{rid}", headers={"Authorization": "Bearer sk-bob"}).status_code == 404
    assert _get(b, f"/v1/responses/{rid}").status_code == 200  # still alice's


def test_a_conversation_of_three_turns_across_replicas(replicas):
    a, b, llm = replicas
    conv = _post(a, {"items": [{"role": "system", "content": "You are terse."}]}, path="/v1/conversations").json()
    for i, client in enumerate((a, b, a)):
        r = _post(client, {"input": f"turn {i}", "conversation": {"id": conv["id"]}})
        assert r.status_code == 200 and r.json()["conversation"] == {"id": conv["id"]}
    messages = json.loads(llm.prompts[-1])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    items = _get(b, f"/v1/conversations/{conv['id']}/items?order=asc&limit=100").json()
    assert len(items["data"]) == 7 and not items["has_more"]
    first_two = _get(b, f"/v1/conversations/{conv['id']}/items?order=asc&limit=2").json()
    assert first_two["has_more"] and first_two["last_id"] == items["data"][1]["id"]
    gone = items["data"][1]["id"]
    assert _get(a, f"/v1/conversations/{conv['id']}/items/{gone}").json() == items["data"][1]
    assert a.delete(f"/v1/conversations/{conv['id']}/items/{gone}",
                    headers={"Authorization": "Bearer sk-alice"}).json()["id"] == conv["id"]
    assert _get(b, f"/v1/conversations/{conv['id']}/items/{gone}").status_code == 404
    again = {"items": [{"id": "msg_mine", "role": "user", "content": "a note"}]}  # one item id, added twice
    assert _post(a, again, path=f"/v1/conversations/{conv['id']}/items").status_code == 200
    twice = _post(b, again, path=f"/v1/conversations/{conv['id']}/items")
    assert twice.status_code == 400 and "Duplicate" in twice.json()["error"]["message"]
    both = _post(a, {"input": "x", "conversation": conv["id"], "previous_response_id": "resp_1"})
    assert both.status_code == 400 and both.json()["error"]["param"] == "conversation"
    assert a.delete(f"/v1/conversations/{conv['id']}", headers={"Authorization": "Bearer sk-alice"}).json()["deleted"]
    assert _post(a, {"input": "x", "conversation": conv["id"]}).status_code == 404


def test_a_streamed_response_is_assembled_by_the_sdk_and_stored(replicas):
    a, b, llm = replicas
    with a.stream("POST", "/v1/responses", json={"input": "stream it", "stream": True},
                  headers={"Authorization": "Bearer sk-alice"}) as r:
        assert r.status_code == 200
        raw = [json.loads(line[len("data: "):]) for line in r.iter_lines() if line.startswith("data: ")]
    state = ResponseStreamState(input_tools=omit, text_format=omit)  # what the SDK's stream helper runs

    for event in raw:
        handled = state.handle_event(construct_type_unchecked(type_=ResponseStreamEvent, value=event))
    assert handled[-1].response.output_text == llm.prompts[-1]  # the SDK's assembled final response
    assert [e["sequence_number"] for e in raw] == list(range(len(raw)))
    final = raw[-1]
    assert final["type"] == "response.completed"
    text = final["response"]["output"][0]["content"][0]["text"]
    assert text == llm.prompts[-1]
    stored = _get(b, f"/v1/responses/{final['response']['id']}").json()
    assert stored["output"][0]["content"][0]["text"] == text and stored["usage"]["output_tokens"] == 5


def test_a_streamed_tool_call_becomes_a_function_call_item():
    stream = StreamEvents()
    events = stream.chunk({"choices": [{"index": 0, "delta": {"content": "Let me check."}}]})
    events += stream.chunk({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "call_1", "function": {"name": "weather", "arguments": '{"ci'}}]}}]})
    events += stream.chunk({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}]}, "finish_reason": "tool_calls"}]})
    events += stream.close()
    kinds = [e["type"] for e in events]
    assert kinds.index("response.output_item.done") < kinds.index("response.function_call_arguments.delta")
    assert stream.output[1] == {**stream.output[1], "type": "function_call", "call_id": "call_1",
                                "arguments": '{"city": "Oslo"}', "status": "completed"}
    assert stream.finish_reason == "tool_calls"


@pytest.mark.parametrize("body, param", [
    ({"input": "x", "background": True}, "background"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools"),
    ({"input": [{"type": "input_image", "image_url": "http://x"}]}, "input"),
    ({"input": "x", "unknown_field": 1}, "unknown_field"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": [{"type": "function_call_output", "call_id": "c9", "output": "o"}]}, "input"),
    ({"input": "x", "previous_response_id": "resp_missing"}, "previous_response_id"),
    ({"input": "x", "conversation": "conv_missing"}, "conversation"),
    ({"input": "x", "tool_choice": "required"}, "tool_choice"),
    ({"input": [{"id": "a\x00", "role": "user", "content": "x"}]}, "input"),
    ({"input": "x", "previous_response_id": "resp_\x00"}, "previous_response_id"),
    ({"input": [{"id": "m1", "role": "user", "content": "x"}, {"id": "m1", "role": "user", "content": "y"}]},
     "input[1].id"),
])
def test_bad_requests_get_openai_errors(replicas, body, param):
    a, _, _ = replicas
    r = _post(a, body)
    assert 400 <= r.status_code < 500, r.text
    assert param in (r.json()["error"]["param"] or ""), r.json()


def test_truncation_auto_keeps_the_newest_items(replicas, monkeypatch):
    a, _, llm = replicas
    ctx = a.app.state.context
    monkeypatch.setattr(ctx, "settings", ctx.settings.model_copy(
        update={"responses": ctx.settings.responses.model_copy(update={"max_context_items": 4})}))
    rid = _post(a, {"input": "one"}).json()["id"]
    rid = _post(a, {"input": "two", "previous_response_id": rid}).json()["id"]  # 3 items of context now
    long = _post(a, {"input": "three", "previous_response_id": rid})
    assert long.status_code == 400 and "truncation" in long.json()["error"]["message"]
    cut = _post(a, {"input": "three", "previous_response_id": rid, "truncation": "auto"})
    assert cut.status_code == 200
    assert [m["content"] for m in json.loads(llm.prompts[-1])][-2:] == [llm.prompts[-2], "three"]
    assert len(json.loads(llm.prompts[-1])) == 4
    assert cut.json()["usage"]["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 0}


def test_retention_prunes_old_responses(engine):
    s = ResponseStore(engine)
    s.record("t", {"id": "resp_old", "output": []}, [])
    assert s.prune(older_than_s=3600) == 0
    assert s.prune_due(0.0, period_s=60) == 1 and s.get("t", "resp_old") is None
    s.record("t", {"id": "resp_new", "output": []}, [])
    assert s.prune_due(0.0, period_s=60) == 0  # pruned within the period: not again


def test_a_chain_a_conversation_and_an_x_session_id_are_each_one_session_on_every_replica(replicas):
    a, b, llm = replicas
    first = _post(a, {"input": "One."}).json()
    assert llm.sessions == []  # a first turn has no session yet: the prefix router places it
    second = _post(b, {"input": "Two.", "previous_response_id": first["id"]}).json()
    _post(a, {"input": "Three.", "previous_response_id": second["id"]})
    chain = llm.sessions[-2:]
    first_item = _get(a, f"/v1/responses/{first['id']}/input_items?order=asc").json()["data"][0]["id"]
    assert chain[0] == chain[1] and chain[0].endswith(f":{first_item}")  # the chain's first item, the tenant's
    other = _post(a, {"input": "Another chain."}).json()
    _post(b, {"input": "Its second turn.", "previous_response_id": other["id"]})
    assert llm.sessions[-1] != chain[0]  # another chain is another session
    conversation = _post(a, {}, path="/v1/conversations").json()["id"]
    for client in (a, b):
        _post(client, {"input": "Hi.", "conversation": conversation})
    assert llm.sessions[-2:] == [conversation, conversation]
    headers = {"Authorization": f"Bearer {KEYS['alice']}", "x-session-id": "chat-42"}
    assert a.post("/v1/responses", json={"input": "x"}, headers=headers).status_code == 200
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert b.post("/v1/chat/completions", json=body, headers=headers).status_code == 200
    assert llm.sessions[-2:] == ["chat-42", "chat-42"]  # the header wins, on every route
    calls = len(llm.sessions)
    assert b.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEYS['alice']}"}).status_code == 200
    assert len(llm.sessions) == calls  # no header: no session, the prefix router decides
    bad = b.post("/v1/chat/completions", json=body, headers={**headers, "x-session-id": "x" * 257})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-session-id"
