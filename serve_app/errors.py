"""The app's exceptions. They carry no live objects, so they pickle across Ray actors unchanged.

Each maps to one HTTP status in ``serve_app.ingress.errors.ERROR_TABLE``; messages are written for the client
(no paths, no stack traces).
"""

from __future__ import annotations


class AppError(Exception):
    """Base class: a failure with a message that is safe to show to the client."""

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


class ServiceUnavailable(AppError):
    """A component needed for this request is down or overloaded (503)."""


class UpstreamTimeout(AppError):
    """A component did not answer within the deadline (504)."""


class EngineError(AppError):
    """An error response produced by the engine's own OpenAI layer, with the status it chose."""

    def __init__(self, message: str, status: int, param: str | None = None):
        super().__init__(message, param)
        self.status = status
        # Exception pickling replays __init__ with self.args.
        self.args = (message, status, param)
