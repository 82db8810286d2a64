"""Several models behind one endpoint: the session app serves the default model and the tiny one
(configs/multi-model.yaml), each its own LLM deployment. Through the unmodified openai SDK each answers chat,
streamed and not, from its own engine; /v1/models lists both and the embedder; a model named for the wrong
task, or not served, is a clear 4xx; health and metrics are per model."""

import openai
import pytest

from tests.names import LLM
from tests.polling import wait_until

pytestmark = pytest.mark.app

TINY = "tiny-random-llama"
EMBEDDER = "all-MiniLM-L6-v2"
MESSAGES = [{"role": "user", "content": "Say hello."}]


@pytest.mark.parametrize("which", ["first", "tiny"])
def test_each_model_answers_from_its_own_engine(client, http, model_name, which):
    name = model_name if which == "first" else TINY
    raw = client.chat.completions.with_raw_response.create(model=name, messages=MESSAGES, max_tokens=4)
    chat = raw.parse()
    # The body's model is what the engine that answered was started with; the header says the same.
    assert chat.model == name and raw.headers["x-served-model"] == name
    assert chat.choices[0].finish_reason in ("length", "stop") and chat.usage.completion_tokens >= 1
    with client.chat.completions.with_streaming_response.create(model=name, messages=MESSAGES, max_tokens=4,
                                                               stream=True) as stream:
        assert stream.headers["x-served-model"] == name
        chunks = list(stream.parse())
    assert chunks and {c.model for c in chunks} == {name}
    # The replica that answered belongs to that model's deployment.
    component = LLM if which == "first" else f"llm:{TINY}"
    assert raw.headers["x-served-by"] == http.get("/healthz").json()["components"][component]["replica"]


def test_models_lists_every_chat_model_and_the_embedder(client, http, model_name):
    listed = client.models.list().data
    assert [m.id for m in listed] == [model_name, TINY, EMBEDDER]
    assert all(m.object == "model" and m.owned_by and m.created > 0 for m in listed)
    assert not any(str(getattr(m, "root", "")).startswith("/") for m in listed), "no server path leaks"
    for name in (model_name, TINY, EMBEDDER):
        assert client.models.retrieve(name).id == name
    r = http.get("/v1/models/no-such-model")
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"


def test_a_model_named_for_the_wrong_task_or_not_served_is_a_clear_error(client, model_name):
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES, max_tokens=2)
    assert exc.value.body["param"] == "model" and "no-such-model" in exc.value.body["message"]
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=EMBEDDER, messages=MESSAGES, max_tokens=2)
    assert "embedding model" in exc.value.body["message"] and exc.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=EMBEDDER, prompt="hi", max_tokens=2)
    assert "/v1/embeddings" in exc.value.body["message"]
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model=TINY, input="hi")
    assert "chat model" in exc.value.body["message"] and exc.value.body["param"] == "model"
    assert len(client.embeddings.create(model=EMBEDDER, input="hi").data[0].embedding) == 384


def test_health_is_per_model_and_each_engine_has_its_own_core(http, model_name):
    components = http.get("/healthz").json()["components"]
    first, tiny = components[LLM], components[f"llm:{TINY}"]
    assert first["status"] == tiny["status"] == "ok"
    assert first["model"] == model_name and tiny["model"] == TINY and first["pid"] != tiny["pid"]
    # engine.cpu_cores: 1 each, claimed apart (serve_app/llm/cpus.py).
    assert first["cpus"] != tiny["cpus"] and "auto" not in (first["cpus"], tiny["cpus"])


def test_metrics_are_labelled_by_served_model(http, client):
    client.completions.create(model=TINY, prompt="one two", max_tokens=3)
    needle = f'model="{TINY}"'

    def output_token_lines() -> list[str]:
        return [x for x in http.get("/metrics").text.splitlines() if x.startswith("ray_serve_app_llm_output_tokens")]

    # This request's series (the model's chat series may be there from earlier tests).
    def counted(lines: list[str]) -> bool:
        return any(needle in x and 'route="/v1/completions"' in x for x in lines)

    # Ray's agent exports what replicas recorded every few seconds.
    lines = wait_until(output_token_lines, 60, interval_s=1, until=counted,
                       what=f"/metrics counting {TINY}'s /v1/completions output tokens")
    assert all('model="' in x for x in lines), "every LLM metric line names its model"
