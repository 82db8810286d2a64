"""The ingress's routes as an application of the components it has: a retrieval-only application (no LLM)
answers the LLM's routes with 404 and the OpenAI error body, and serves retrieval; an application without the
retrieval tier answers its routes with 404. Real FastAPI app, middleware and error handlers
(serve_app/ingress/fastapi_app.py) over an IngressContext with fakes of the deployment handles."""

import pytest
from fastapi.testclient import TestClient

from serve_app.config.settings import AppSettings
from serve_app.ingress.context import IngressContext
from serve_app.ingress.fastapi_app import create_app
from tests.fakes.handles import Method
from tests.names import DEPLOYMENT

pytestmark = pytest.mark.unit


class _VectorStore:
    """What the Ingress calls on the VectorStore deployment's handle."""

    def __init__(self):
        self.search = Method(lambda q, k, f, t, m, tenant: [{"document_id": "d1", "chunk_id": "d1:0", "position": 0, "text": q,
                                                  "score": 0.5, "metadata": {}}])


def _client(llm=None, vector=None) -> TestClient:
    settings = AppSettings.model_validate({"model": {"enabled": llm is not None}})
    return TestClient(create_app(IngressContext.build(settings, llm, vector)))


@pytest.mark.parametrize("method, path, body", [
    ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ("post", "/v1/completions", {"prompt": "hi"}),
])
def test_a_retrieval_only_application_answers_the_llms_routes_with_404(method, path, body):
    r = getattr(_client(vector=_VectorStore()), method)(path, **({"json": body} if body else {}))
    assert r.status_code == 404, r.text
    assert r.json()["error"]["type"] == "not_found_error" and "LLM is disabled" in r.json()["error"]["message"]


def test_a_retrieval_only_application_lists_no_chat_model():
    r = _client(vector=_VectorStore()).get("/v1/models")
    assert r.status_code == 200 and r.json() == {"object": "list", "data": []}, r.text


def test_a_retrieval_only_application_serves_search():
    r = _client(vector=_VectorStore()).post("/v1/search", json={"query": "glaciers", "top_k": 1})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["document_id"] == "d1"


def test_an_application_without_the_retrieval_tier_answers_its_routes_with_404():
    r = _client().post("/v1/search", json={"query": "glaciers", "top_k": 1})
    assert r.status_code == 404 and "retrieval tier is disabled" in r.json()["error"]["message"]
    r = _client().post("/v1/documents", json={"documents": [{"id": "a", "text": "b"}]})
    assert r.status_code == 404, r.text


class _Key:
    def __init__(self, models):
        self.models = models


def test_requests_are_routed_by_model_and_the_allow_list_hides_the_others():
    from serve_app.errors import InvalidRequest, ModelNotFound

    settings = AppSettings.model_validate({"models": [{"model": {"source": "tiny"}}]})
    first, tiny = object(), object()
    ctx = IngressContext.build(settings, {DEPLOYMENT: first, "LLMServer-tiny-random-llama": tiny}, _VectorStore(),
                               embedder=object()).models
    assert ctx.chat_model(None) == ("SmolLM2-135M-Instruct", first)
    assert ctx.chat_model("tiny-random-llama") == ("tiny-random-llama", tiny)
    with pytest.raises(InvalidRequest, match="embedding model"):
        ctx.chat_model("all-MiniLM-L6-v2")
    only_tiny = _Key(["tiny-random-llama"])
    assert ctx.chat_model(None, only_tiny) == ("tiny-random-llama", tiny)
    for name in ("SmolLM2-135M-Instruct", "nope", "all-MiniLM-L6-v2"):  # hidden, unknown: the same answer
        with pytest.raises(ModelNotFound) as exc:
            ctx.chat_model(name, only_tiny)
        assert str(exc.value) == f"The model `{name}` does not exist."
    assert ctx.allowed_models(only_tiny) == ["tiny-random-llama"]


def test_adapters_route_to_their_model_as_the_multiplexed_id_and_need_naming_in_an_allow_list():
    from serve_app.errors import ModelNotFound

    class _Handle:
        def __init__(self, model_id=None):
            self.model_id = model_id

        def options(self, multiplexed_model_id):
            return _Handle(multiplexed_model_id)

    settings = AppSettings.model_validate({"lora": {"adapters": {"support": "support/v1"}},
                                           "models": [{"model": {"source": "tiny"}}]})
    first = _Handle()
    ctx = IngressContext.build(settings, {DEPLOYMENT: first, "LLMServer-tiny-random-llama": _Handle()},
                               _VectorStore()).models
    name, handle = ctx.chat_model("support")
    assert name == "support" and handle.model_id == "support"  # Serve routes it to a replica holding it
    ctx.set_adapters({"SmolLM2-135M-Instruct": {"billing": "billing/v2"}})  # a release's user_config
    assert ctx.adapters == {"billing": "SmolLM2-135M-Instruct"}
    with pytest.raises(ModelNotFound):
        ctx.chat_model("support")  # unloaded
    assert ctx.chat_model("billing", _Key(["billing"]))[1].model_id == "billing"
    with pytest.raises(ModelNotFound):  # the base model allowed, the adapter not named: hidden
        ctx.chat_model("billing", _Key(["SmolLM2-135M-Instruct"]))
    assert ctx.allowed_adapters(_Key(["SmolLM2-135M-Instruct"])) == []
