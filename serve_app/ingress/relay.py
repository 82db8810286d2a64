"""Calling the LLM deployment from the ingress: retries before the first byte, deadlines, SSE relay."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from ray import exceptions as ray_exc
from ray.serve import exceptions as serve_exc

from serve_app.config.settings import IngressSettings
from serve_app.errors import AppError, ServiceUnavailable, UpstreamTimeout
from serve_app.ingress.errors import error_body, status_for, unwrap

logger = logging.getLogger("ray.serve")

# The replica died or was unreachable before it produced anything: the request had no effect and is safe
# to send again. Ray Serve's router already retries rejections and picks live replicas; this covers a
# replica that dies after it accepted the request.
RETRYABLE = (ray_exc.ActorDiedError, ray_exc.ActorUnavailableError, ray_exc.RayActorError)


async def open_call(method, args: tuple, settings: IngressSettings) -> tuple[dict[str, Any], Any]:
    """Start a streaming handle call and wait for its head. Returns (head, response generator)."""
    retry = settings.retry
    delay = retry.backoff_s
    for attempt in range(1, retry.attempts + 1):
        gen = method.options(stream=True).remote(*args)
        try:
            head = await asyncio.wait_for(gen.__anext__(), settings.request_timeout_s)
            return head, gen
        except asyncio.TimeoutError:
            gen.cancel()
            raise UpstreamTimeout(f"no answer within {settings.request_timeout_s:g}s") from None
        except RETRYABLE as exc:
            gen.cancel()
            if attempt == retry.attempts:
                raise ServiceUnavailable("the model replica is unavailable; retry later") from exc
            logger.warning("replica failed before answering (attempt %d/%d): %s", attempt, retry.attempts, exc)
            await asyncio.sleep(min(delay, retry.max_backoff_s))
            delay *= 2
        except (serve_exc.BackPressureError, serve_exc.DeploymentUnavailableError) as exc:
            gen.cancel()
            raise ServiceUnavailable("the model deployment is overloaded or unavailable; retry later") from exc
        except BaseException:
            gen.cancel()
            raise
    raise AssertionError("unreachable")


async def awaited(response):
    """Await a DeploymentResponse. When the awaiting task is cancelled (client gone, deadline, a sibling
    branch failed), the request is cancelled on the replica too instead of running on unobserved."""
    try:
        return await response
    except asyncio.CancelledError:
        cancel = getattr(response, "cancel", None)  # a plain actor call (ObjectRef) has none: it runs to its end
        if cancel is not None:
            cancel()
        raise


def _error_event(exc: BaseException, generic: str) -> str:
    """An exception raised mid-stream as one SSE error event; unexpected 5xx causes keep their details in
    the log, not in the stream."""
    cause = unwrap(exc)
    status = status_for(cause) or 503
    logger.warning("stream failed mid-way: %s", cause)
    msg = str(cause) if status < 500 or isinstance(cause, AppError) else generic
    return _sse(error_body(status, msg, getattr(cause, "param", None)))


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj)}\n\n"


async def relay_stream(gen) -> AsyncGenerator[str, None]:
    """Relay SSE lines from the replica. A failure mid-stream ends it with an in-band error and [DONE],
    the way vLLM reports generation errors, so clients never see a silently truncated stream."""
    done = False
    try:
        async for line in gen:
            if line.startswith("data: [DONE]"):
                done = True
            yield line
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - turned into an in-band error event
        yield _error_event(exc, "the model replica failed during the stream")
        if not done:
            yield "data: [DONE]\n\n"
    finally:
        # Client gone or stream ended: make sure the replica stops generating (aborts the vLLM request).
        gen.cancel()


async def sse_events(events: AsyncIterator[dict[str, Any]]) -> AsyncGenerator[str, None]:
    """Serve our own event stream (RAG, agent) as SSE: one JSON object per event, then ``[DONE]``. A
    failure mid-stream becomes an in-band error event, as in ``relay_stream``."""
    try:
        async for event in events:
            yield _sse(event)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - turned into an in-band error event
        yield _error_event(exc, "a component failed during the stream")
    finally:
        await events.aclose()
    yield "data: [DONE]\n\n"
