"""The FastAPI handlers that answer every error with the one table of ``serve_app.errors``.

Every error leaves the app as an OpenAI error body ``{"error": {"message", "type", "param", "code"}}`` with
OpenAI's type and string code (``serve_app.errors.ERROR_CODES``). Messages of unexpected exceptions are never
shown to the client.
"""

from __future__ import annotations

import logging
import math
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from serve_app import errors as E
from serve_app.errors import error_body, status_for, unwrap
from serve_app.llm.errors import from_vllm

logger = logging.getLogger("ray.serve")


def error_response(status: int, message: str, param: str | None = None, headers=None,
                   code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def response_for(exc: BaseException) -> JSONResponse:
    exc = unwrap(exc)
    if not isinstance(exc, E.AppError):
        # vLLM's protocol models raise vLLM's own validation errors while FastAPI parses the body.
        exc = from_vllm(exc, builtin=False) or exc
    status = status_for(exc)
    if status is None:
        logger.error("unhandled error: %s", exc, exc_info=exc)
        return error_response(500, "internal error; the request id identifies it in the logs")
    if isinstance(exc, (E.RateLimited, E.ModelStarting)):
        return error_response(status, exc.message, exc.param, headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})
    if isinstance(exc, E.AppError):
        # A 503 (a component down or over its queue limit) tells the client when to try again.
        return error_response(status, exc.message, exc.param, headers={"Retry-After": "1"} if status == 503 else None,
                              code=exc.code)
    if status == 503:
        return error_response(503, "a component is unavailable or overloaded; retry later", headers={"Retry-After": "1"})
    return error_response(status, str(exc))


def _param_from_loc(loc: tuple) -> str | None:
    # FastAPI prefixes body errors with "body"; pydantic adds wrapper/union markers such as
    # "function-wrap[...]" or "str" that mean nothing to an API user.
    parts = [str(p) for p in loc if p != "body" and "[" not in str(p) and "(" not in str(p)]
    return ".".join(parts) or None


def _validation_code(kind: str) -> str:
    # pydantic's error type -> OpenAI's code for it.
    if kind == "missing":
        return "missing_required_parameter"
    if kind == "extra_forbidden":
        return "unknown_parameter"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return "invalid_type"
    return "invalid_value"


async def _on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    errs = exc.errors()
    if not errs:
        return error_response(400, "invalid request")
    first = errs[0]
    if first.get("type") == "json_invalid":
        return error_response(400, "request body is not valid JSON", code="invalid_json")
    param = _param_from_loc(tuple(first.get("loc", ())))
    if param is None and first.get("type") == "model_attributes_type":
        return error_response(400, "request body must be a JSON object", code="invalid_type")
    msgs = []
    for e in errs[:5]:
        where = _param_from_loc(tuple(e.get("loc", ()))) or "body"
        msgs.append(f"{where}: {e.get('msg')}")
    more = f" (and {len(errs) - 5} more)" if len(errs) > 5 else ""
    return error_response(400, "; ".join(msgs) + more, param, code=_validation_code(str(first.get("type", ""))))


async def _on_http(_: Request, exc: HTTPException) -> JSONResponse:
    try:
        message = str(exc.detail) if exc.detail else HTTPStatus(exc.status_code).phrase
    except ValueError:
        message = "error"
    return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))


async def _on_app_error(_: Request, exc: Exception) -> JSONResponse:
    return response_for(exc)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(
        RequestValidationError, _on_validation)  # type: ignore[arg-type]  # Starlette passes it only this class
    app.add_exception_handler(HTTPException, _on_http)  # type: ignore[arg-type]  # Starlette passes it only this class
    app.add_exception_handler(E.AppError, _on_app_error)
    # vLLM's protocol models raise vLLM's own validation errors while the body is parsed. A handler of its own
    # answers them inside the middleware stack; the catch-all below answers too, but Starlette re-raises past
    # the middlewares then, which would count and log a 400 as a failed request.
    from vllm.exceptions import VLLMError

    app.add_exception_handler(VLLMError, _on_app_error)
    # Catch-all: anything else becomes a sanitized 500 (logged with its stack trace).
    app.add_exception_handler(Exception, _on_app_error)
