"""The app's exceptions and the one table from exceptions to HTTP statuses and OpenAI error bodies.

The exceptions carry no live objects, so they pickle across Ray actors unchanged. Each maps to one HTTP status
in ``ERROR_TABLE``; messages are written for the client (no paths, no stack traces). The ingress answers with
this table (serve_app/ingress/errors.py), and the call layer turns a failure in the middle of a stream into
an in-band error event with it (serve_app/protocol/stream.py).
"""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    """Base class: a failure with a message that is safe to show to the client. ``code`` is its OpenAI error
    code when it has one of its own (else the status's, ``ERROR_CODES``)."""

    code: str | None = None

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message, param)
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return self.message


class InvalidRequest(AppError):
    """The request is malformed or out of bounds (400)."""


class ModelNotFound(AppError):
    """The request names a model this app does not serve (404)."""

    code = "model_not_found"


class NotFound(AppError):
    """The resource does not exist (404)."""


class Unauthorized(AppError):
    """Missing or wrong credentials (401)."""


class Forbidden(AppError):
    """The operation is not allowed here, whatever the credentials (403)."""


class Conflict(AppError):
    """The operation conflicts with one in progress (409)."""


class RateLimited(AppError):
    """The API key is over one of its rate limits (429, with Retry-After)."""

    def __init__(self, message: str, retry_after_s: float, param: str | None = None):
        super().__init__(message, param)
        self.retry_after_s = retry_after_s
        self.args = (message, retry_after_s, param)


class PayloadTooLarge(AppError):
    """The request body is over the configured limit (413)."""


class UnsupportedFile(AppError):
    """A file of a kind the app does not read, or whose content is not what its name says (415)."""


class UnreadableFile(AppError):
    """A file of a supported kind that cannot be read: encrypted, corrupt, without text, too large once
    expanded, or over the parser's time or memory (422)."""


class ServiceUnavailable(AppError):
    """A component needed for this request is down or overloaded (503)."""


class ModelStarting(ServiceUnavailable):
    """A model that scaled to zero did not start within the cold-start deadline (503, with Retry-After: the
    start goes on, for the next request)."""

    def __init__(self, message: str, retry_after_s: float, param: str | None = None):
        super().__init__(message, param)
        self.retry_after_s = retry_after_s
        self.args = (message, retry_after_s, param)


class UpstreamTimeout(AppError):
    """A component did not answer within the deadline (504)."""


class EngineError(AppError):
    """An error response produced by the engine's own OpenAI layer, with the status it chose."""

    def __init__(self, message: str, status: int, param: str | None = None):
        super().__init__(message, param)
        self.status = status
        # vLLM names no code; its wording for a prompt over the context is the only sign of one.
        if status == 400 and "maximum context length" in message:
            self.code = "context_length_exceeded"
        # Exception pickling replays __init__ with self.args.
        self.args = (message, status, param)


# exception class -> HTTP status. Looked up along the class's MRO, so subclasses inherit their base's row.
ERROR_TABLE: dict[type[BaseException], int] = {
    InvalidRequest: 400,
    ModelNotFound: 404,
    NotFound: 404,
    Unauthorized: 401,
    Forbidden: 403,
    Conflict: 409,
    PayloadTooLarge: 413,
    UnsupportedFile: 415,
    UnreadableFile: 422,
    RateLimited: 429,
    ServiceUnavailable: 503,
    UpstreamTimeout: 504,
}

# HTTP status -> OpenAI error type.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    501: "server_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}

# HTTP status -> OpenAI error code (a string, as OpenAI sends it), for an error without one of its own. The
# same vocabulary in the app's answers and in-stream errors, and in vLLM's (serve_app/llm/errors.py).
ERROR_CODES: dict[int, str] = {
    400: "invalid_value",
    401: "invalid_api_key",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "unprocessable_entity",
    429: "rate_limit_exceeded",
    500: "server_error",
    501: "not_implemented",
    503: "service_unavailable",
    504: "timeout",
}
# Codes that stand for another status than the one they are listed under above.
_CODE_STATUS = {"model_not_found": 404, "context_length_exceeded": 400, "invalid_json": 400,
                "missing_required_parameter": 400, "invalid_type": 400, "unknown_parameter": 400}
# The tables read backwards (a code or type listed under several statuses stands for the lowest).
_STATUS_OF_CODE = {**{c: s for s, c in sorted(ERROR_CODES.items(), reverse=True)}, **_CODE_STATUS}
_STATUS_OF_TYPE = {t: s for s, t in sorted(ERROR_TYPES.items(), reverse=True)}

_MAX_MESSAGE = 2000


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    if len(message) > _MAX_MESSAGE:
        message = message[:_MAX_MESSAGE] + "...[truncated]"
    err_type = ERROR_TYPES.get(status) or ("invalid_request_error" if status < 500 else "server_error")
    code = code or ERROR_CODES.get(status) or ("invalid_value" if status < 500 else "server_error")
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def status_of(error: dict[str, Any]) -> int:
    """The HTTP status an error body stands for (an in-stream error event carries none of its own)."""
    code, err_type = error.get("code"), error.get("type")
    if isinstance(code, int):  # vLLM's own bodies carry the status as the code
        return code
    by_code = _STATUS_OF_CODE.get(code) if isinstance(code, str) else None
    by_type = _STATUS_OF_TYPE.get(err_type) if isinstance(err_type, str) else None
    return by_code or by_type or 500


# Ray's errors for a replica that died or is overloaded, by the qualified name of their class, matched along the
# MRO (so their subclasses too: ActorDiedError, a RayTaskError wrapping one). Names, not classes: this bottom
# layer of the app depends on no runtime, Ray included; these are Ray's public exception classes.
_RAY_UNAVAILABLE = frozenset({
    "ray.exceptions.RayActorError",
    "ray.exceptions.ActorUnavailableError",
    "ray.serve.exceptions.BackPressureError",
    "ray.serve.exceptions.DeploymentUnavailableError",
})


def _qualified_names(exc: BaseException) -> set[str]:
    return {f"{cls.__module__}.{cls.__qualname__}" for cls in type(exc).__mro__}


def status_for(exc: BaseException) -> int | None:
    if isinstance(exc, EngineError):
        return exc.status
    if not _qualified_names(exc).isdisjoint(_RAY_UNAVAILABLE):
        # A replica died or is overloaded: the client may retry.
        return 503
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return None


def unwrap(exc: BaseException) -> BaseException:
    """The original exception behind a Ray task error raised by a replica.

    Ray's RayTaskError is recognised by what it has, not imported (see ``_RAY_UNAVAILABLE``): its class
    defines ``as_instanceof_cause`` and the instance holds the replica's exception as ``cause``. The class is
    asked, not the instance: the instance Ray raises forwards unknown attributes to its cause."""
    while callable(getattr(type(exc), "as_instanceof_cause", None)):
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, BaseException):
            break
        exc = cause
    return exc
