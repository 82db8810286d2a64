"""Translate vLLM's exceptions into the app's, using vLLM's own exception → status mapping."""

from __future__ import annotations

from serve_app.errors import AppError, EngineError, ServiceUnavailable


def from_vllm(exc: BaseException, builtin: bool = True) -> AppError | None:
    """The app error for a vLLM exception, else None.

    With ``builtin`` (for exceptions raised inside vLLM's serving layer), plain ValueError / TypeError /
    OverflowError count too: vLLM still raises those for bad requests and its server maps them to 400.
    """
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
    from vllm.exceptions import VLLMError
    from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

    if isinstance(exc, EngineDeadError):
        return ServiceUnavailable("the model engine is down; the replica is being replaced")
    if isinstance(exc, EngineGenerateError) and exc.__cause__ is not None:
        # The engine wraps whatever a request raised while it was taken in as a generation error (500),
        # including the plain ValueErrors vLLM still raises for bad requests (its server maps those to 400
        # when they surface directly). The cause decides.
        cause = from_vllm(exc.__cause__, builtin=True)
        if isinstance(cause, EngineError) and cause.status < 500:
            return cause
    kinds = (VLLMError, ValueError, TypeError, OverflowError) if builtin else (VLLMError,)
    if not isinstance(exc, kinds):
        return None
    err = create_error_response(exc).error
    status = int(err.code)
    if status >= 500:
        # Server-side detail stays in the logs.
        return EngineError("the model engine failed to process the request", status)
    return EngineError(err.message, status, err.param)
