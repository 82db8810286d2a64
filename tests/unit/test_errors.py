"""Error invariants: every error leaves as one OpenAI-style body with the status from the one table;
vLLM's own errors keep vLLM's status and parameter; exceptions survive pickling (they cross Ray actors);
unexpected exceptions never leak their message."""

import json
import pickle

import pytest
from vllm.exceptions import VLLMValidationError
from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

from serve_app import errors as E
from serve_app.errors import ERROR_TABLE, error_body, status_for, status_of
from serve_app.ingress.errors import response_for
from serve_app.llm.errors import from_vllm

pytestmark = [pytest.mark.unit, pytest.mark.vllm]  # vllm: runs under `make check-gpu-build` too


def _body(resp):
    return json.loads(resp.body)


@pytest.mark.parametrize(
    "exc, status",
    [
        (E.InvalidRequest("bad", "n"), 400),
        (E.ModelNotFound("no", "model"), 404),
        (E.NotFound("no"), 404),
        (E.PayloadTooLarge("big"), 413),
        (E.ServiceUnavailable("down"), 503),
        (E.UpstreamTimeout("slow"), 504),
        (E.EngineError("x", 422, "p"), 422),
    ],
)
def test_table_and_body(exc, status):
    assert status_for(exc) == status
    resp = response_for(exc)
    assert resp.status_code == status
    err = _body(resp)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert status_of(err) == status and isinstance(err["code"], str) and err["message"] == exc.message and err["param"] == exc.param


def test_every_503_says_when_to_retry():
    from ray.serve.exceptions import BackPressureError

    for exc in (E.ServiceUnavailable("down"), from_vllm(EngineDeadError()), BackPressureError(num_queued_requests=3, max_queued_requests=2)):
        resp = response_for(exc)
        assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
    assert "retry-after" not in response_for(E.InvalidRequest("bad")).headers


def test_every_table_row_has_a_type():
    for status in ERROR_TABLE.values():
        assert error_body(status, "m")["error"]["type"] != "server_error"


@pytest.mark.parametrize("exc", [E.InvalidRequest("bad", "n"), E.EngineError("x", 400, "max_tokens"), E.ServiceUnavailable("d")])
def test_exceptions_pickle(exc):
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc) and back.message == exc.message and back.param == exc.param
    assert status_for(back) == status_for(exc)


def test_unexpected_exception_is_sanitized():
    resp = response_for(RuntimeError("secret path /x/y"))
    assert resp.status_code == 500
    assert "secret" not in resp.body.decode()


def test_vllm_validation_error_keeps_status_and_param():
    mapped = from_vllm(VLLMValidationError("max_tokens too large", parameter="max_tokens", value=10**6))
    assert isinstance(mapped, E.EngineError) and mapped.status == 400 and mapped.param == "max_tokens"
    # The ingress sees vLLM's errors raised while FastAPI parses the body.
    resp = response_for(VLLMValidationError("prompt empty", parameter="prompt"))
    assert resp.status_code == 400 and _body(resp)["error"]["param"] == "prompt"


def _wrapped(cause):
    """What the engine raises for an exception a request raised while it was taken in."""
    try:
        try:
            raise cause
        except Exception as e:
            raise EngineGenerateError() from e
    except EngineGenerateError as exc:
        return exc


def test_a_request_error_the_engine_wrapped_keeps_its_4xx_status():
    mapped = from_vllm(_wrapped(ValueError("sampling distribution replay requires temperature > 0")))
    assert isinstance(mapped, E.EngineError) and mapped.status == 400 and "temperature" in mapped.message
    mapped = from_vllm(_wrapped(VLLMValidationError("bad", parameter="stop")))
    assert mapped.status == 400 and mapped.param == "stop"
    # A real failure inside the engine stays a server error, its detail kept out of the answer.
    for cause in (RuntimeError("CUDA error: device-side assert"), KeyError("x")):
        mapped = from_vllm(_wrapped(cause))
        assert mapped.status == 500 and "CUDA" not in mapped.message
    assert from_vllm(EngineGenerateError()).status == 500


def test_dead_engine_is_503_and_plain_errors_stay_500_at_the_ingress():
    assert status_for(from_vllm(EngineDeadError())) == 503
    assert from_vllm(ValueError("x"), builtin=False) is None
    assert response_for(ValueError("internal detail")).status_code == 500


def test_long_messages_are_truncated():
    assert len(error_body(400, "x" * 10_000)["error"]["message"]) < 2100


def test_vllm_errors_are_answered_inside_the_middleware_stack():
    # Answered by their own handler, a vLLM validation error never reaches Starlette's server-error layer,
    # which would re-raise it through the middlewares (counted and logged as a failed request).
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from serve_app.ingress.errors import install_error_handlers

    app = FastAPI()
    install_error_handlers(app)
    seen = []

    @app.middleware("http")
    async def record(request, call_next):
        try:
            response = await call_next(request)
        except Exception as exc:
            seen.append(type(exc).__name__)
            raise
        seen.append(response.status_code)
        return response

    @app.post("/x")
    async def x():
        raise VLLMValidationError("Either prompt or prompt_embeds must be provided", parameter="prompt")

    with TestClient(app, raise_server_exceptions=True) as client:
        r = client.post("/x")
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt" and seen == [400]


def test_metadata_keys_are_plain_names():
    from pydantic import ValidationError

    from serve_app.protocol.rag import RagRequest
    from serve_app.protocol.retrieval import Document, SearchRequest

    SearchRequest(query="q", filter={"topic": "x", "lang-code_2": 1})
    for bad in ("", "a.b", "a[0]", "V\U0007452d", "x" * 65):
        with pytest.raises(ValidationError):
            SearchRequest(query="q", filter={bad: "x"})
        with pytest.raises(ValidationError):
            Document(id="d", text="t", metadata={bad: "x"})
        with pytest.raises(ValidationError):
            RagRequest(question="q", filter={bad: "x"})


@pytest.mark.parametrize("field, value", [("structured_outputs", False), ("structured_outputs", 6e-69),
                                          ("structured_outputs", "json"), ("stream_options", 3),
                                          ("response_format", ["json_object"])])
def test_values_vllm_validators_do_not_expect_are_a_400_not_a_crash(field, value):
    """vLLM's own before-validators call ``.get`` on some fields; the guarded models (what the routes take)
    turn a value of another type into a validation error naming the field."""
    from pydantic import ValidationError

    from serve_app.protocol.openai import ChatCompletionRequest, CompletionRequest

    for model, base in ((ChatCompletionRequest, {"messages": [{"role": "user", "content": "hi"}]}),
                        (CompletionRequest, {"prompt": "hi"})):
        with pytest.raises(ValidationError, match=field):
            model.model_validate({**base, field: value})
    ok = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}],
                                               "structured_outputs": {"regex": "a+"}})
    assert ok.structured_outputs.regex == "a+"


def test_an_unexpected_exception_inside_validation_becomes_a_value_error():
    """Inside a pydantic validator a ValueError is a validation error (400); an AttributeError is not."""
    from serve_app.protocol.openai import _guard

    def crashing(data):
        raise AttributeError("'bool' object has no attribute 'get'")

    with pytest.raises(ValueError, match="wrong type or shape.*AttributeError"):
        _guard({"messages": []}, crashing)
    assert _guard({"messages": []}, lambda data: "validated") == "validated"


def test_vllms_in_stream_errors_are_rewritten_into_the_apps_vocabulary():
    """vLLM reports a failure inside a stream through its serving object; the engine makes that raise, and
    writes the error event itself, typed, with OpenAI's string codes and types (a server error's detail hidden)."""
    import asyncio

    from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
    from vllm.exceptions import GenerationError, VLLMValidationError

    from serve_app.llm.engine import raise_stream_errors, typed_stream
    from serve_app.protocol.stream import ErrorEvent

    serving = object.__new__(OpenAIServingChat)  # only its error reporting runs: no engine behind it
    raise_stream_errors(serving)

    async def vllm_stream(error):
        # What vLLM's stream generators do with a failure: report it in-band, then [DONE].
        yield 'data: {"choices": []}\n\n'
        try:
            raise error
        except GenerationError as e:
            yield f"data: {serving._convert_generation_error_to_streaming_response(e)}\n\n"
        except VLLMValidationError as e:
            yield f"data: {serving.create_streaming_error_response(e)}\n\n"
        yield "data: [DONE]\n\n"

    async def run(error):
        return [line async for line in typed_stream(vllm_stream(error))]

    too_long = VLLMValidationError("This model's maximum context length is 8 tokens", parameter="input_tokens")
    shown, hidden = (asyncio.run(run(e)) for e in (too_long, GenerationError("/secret/path broke")))
    for lines in (shown, hidden):
        assert lines[0] == 'data: {"choices": []}\n\n' and lines[-1] == "data: [DONE]\n\n" and len(lines) == 3
        assert isinstance(lines[1], ErrorEvent) and lines[1].body == json.loads(lines[1][len("data: "):])
    first = shown[1].body["error"]
    assert first["code"] == "context_length_exceeded" and first["type"] == "invalid_request_error"
    assert first["param"] == "input_tokens"
    assert hidden[1].body["error"] == {"message": "the model engine failed to process the request",
                                       "type": "server_error", "param": None, "code": "server_error"}


def test_rays_unavailability_errors_are_named_as_ray_names_them():
    """errors.py (the bottom layer) names Ray's classes instead of importing Ray: the names must stay true for the
    installed Ray, and a replica's exception wrapped in Ray's task error is found again."""
    import importlib

    import ray.exceptions as ray_exc

    for qualified in E._RAY_UNAVAILABLE:
        module, _, name = qualified.rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), name), type), qualified
    assert status_for(ray_exc.ActorDiedError()) == 503  # a subclass counts
    wrapped = ray_exc.RayTaskError("generate", "traceback", E.InvalidRequest("bad", "x")).as_instanceof_cause()
    assert isinstance(E.unwrap(wrapped), E.InvalidRequest) and status_for(wrapped) == 400
