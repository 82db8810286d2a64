"""The app speaks OpenAI's API to the unmodified `openai` SDK: models, chat and completions, streamed and
not, and response_format json_schema output that parses and matches the schema."""

import json

import pytest

from serve_app.errors import status_of

pytestmark = pytest.mark.app


def test_models(client, model_name):
    # The first served model is listed first (the full list: tests/integration/test_models.py).
    assert client.models.list().data[0].id == model_name == "SmolLM2-135M-Instruct"


@pytest.mark.smoke  # `make test-fast`: the started app answers the unmodified openai client
def test_chat(client, model_name):
    r = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "Say hello."}], max_tokens=16, temperature=0
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content.strip()
    assert 0 < r.usage.completion_tokens <= 16


def test_chat_default_model_when_omitted(http):
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None


def test_chat_stream_has_many_chunks(client, model_name):
    stream = client.chat.completions.create(
        model=model_name,
        messages=[{"role": "user", "content": "Count from one to ten."}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert text.strip()
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"] or finals == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 1


def test_completion(client, model_name):
    r = client.completions.create(model=model_name, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text


def test_completion_stream(client, model_name):
    chunks = list(client.completions.create(model=model_name, prompt="One, two,", max_tokens=8, stream=True))
    assert len(chunks) > 1 and "".join(c.choices[0].text for c in chunks)


def test_n_choices(client, model_name):
    r = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "Pick a colour."}], max_tokens=8, n=2, temperature=1
    )
    assert sorted(c.index for c in r.choices) == [0, 1]


def test_json_schema_output_parses(client, model_name):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 24}, "country": {"type": "string", "maxLength": 24}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model=model_name,
        messages=[{"role": "user", "content": "Name one city and its country, as JSON."}],
        max_tokens=120,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema, "strict": True}},
    )
    data = json.loads(r.choices[0].message.content)
    assert set(data) == {"city", "country"}
    assert all(isinstance(v, str) for v in data.values())


def test_tokenize_and_detokenize_round_trip_on_each_model(http, model_name):
    """`vllm serve`'s /tokenize and /detokenize, per model: a prompt to ids and back; chat messages through the
    model's chat template; bad input a 4xx with the OpenAI body."""
    for model in (model_name, "tiny-random-llama"):
        r = http.post("/tokenize", json={"model": model, "prompt": "Hello world"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["count"] == len(body["tokens"]) > 0 and body["max_model_len"] == 2048
        d = http.post("/detokenize", json={"model": model, "tokens": body["tokens"]})
        assert d.status_code == 200 and d.json()["prompt"] == "Hello world", d.text
    chat = http.post("/tokenize", json={"model": model_name, "messages": [{"role": "user", "content": "Hi"}],
                                        "add_generation_prompt": True, "return_token_strs": True}).json()
    assert "<|im_start|>" in chat["token_strs"] and chat["count"] > 4  # the chat template's turn markers
    for path, body, status in [("/tokenize", {"model": "nope", "prompt": "x"}, 404),
                               ("/tokenize", {"model": model_name, "prompt": 5}, 400),
                               ("/tokenize", {"model": model_name}, 400),
                               ("/detokenize", {"model": model_name, "tokens": "x"}, 400),
                               ("/detokenize", {"model": model_name, "tokens": [10 ** 9]}, None)]:
        r = http.post(path, json=body)
        if status is None:  # an id outside the vocabulary: refused or decoded, never a server error
            assert r.status_code < 500, r.text
            continue
        assert r.status_code == status, (path, body, r.text)
        assert status_of(r.json()["error"]) == status
