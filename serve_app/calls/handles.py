"""Calls on deployment (and actor) handles — the only place of the app that makes them: one call awaited within
a deadline, so that cancelling the caller cancels the call on the replica too; the start of a streaming call
with a deadline and retries before its first item. Every call has a deadline: a replica that never answers
(wedged, or a request queued behind a deployment that has no replica) must not hold its caller forever.

The retry loop is written out rather than taken from tenacity: what may be retried is decided per attempt by
where the failure happened (before the stream's first item, on a replica that died) and every failed attempt
must cancel its own stream; as a loop this is a dozen lines, as tenacity's AsyncRetrying the same conditions
would be spread over callbacks. The backoff doubles per attempt with "equal jitter" (half fixed, half random),
so callers that failed together do not all come back at the same instant."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from ray import exceptions as ray_exc
from ray.serve import exceptions as serve_exc

from serve_app.config.settings import IngressSettings
from serve_app.errors import ServiceUnavailable, UpstreamTimeout

logger = logging.getLogger("ray.serve")

# The replica died or was unreachable before it produced anything: the request had no effect and is safe
# to send again. Ray Serve's router already retries rejections and picks live replicas; this covers a
# replica that dies after it accepted the request.
RETRYABLE = (ray_exc.ActorDiedError, ray_exc.ActorUnavailableError, ray_exc.RayActorError)


def jittered(delay_s: float) -> float:
    return delay_s / 2 + random.uniform(0, delay_s / 2)


# The deadline of a call whose caller names none: the default request deadline, long enough for the longest
# legitimate call (embedding an ingest batch). Callers that know their own deadline pass it.
DEFAULT_TIMEOUT_S: float = IngressSettings.model_fields["request_timeout_s"].default


async def call(handle, method: str, *args, timeout_s: float = DEFAULT_TIMEOUT_S, **kwargs) -> Any:
    """``handle.method.remote(*args, **kwargs)`` awaited; past ``timeout_s`` the call is cancelled and
    UpstreamTimeout raised."""
    response = getattr(handle, method).remote(*args, **kwargs)
    try:
        return await asyncio.wait_for(awaited(response), timeout_s)
    except TimeoutError:
        raise UpstreamTimeout(f"{method} did not answer within {timeout_s:g}s") from None


def call_blocking(handle, method: str, *args, timeout_s: float, **kwargs) -> Any:
    """The same from synchronous code (a Ray job's driver): wait for the result at most ``timeout_s``, then
    cancel the call and raise UpstreamTimeout."""
    response = getattr(handle, method).remote(*args, **kwargs)
    try:
        return response.result(timeout_s=timeout_s)
    except TimeoutError:  # Serve's, and Ray's GetTimeoutError (a subclass)
        response.cancel()
        raise UpstreamTimeout(f"{method} did not answer within {timeout_s:g}s") from None


async def open_call(method, args: tuple, settings: IngressSettings) -> tuple[dict[str, Any], Any]:
    """Start a streaming handle call and wait for its head. Returns (head, response generator)."""
    retry = settings.retry
    delay = retry.backoff_s
    for attempt in range(1, retry.attempts + 1):
        gen = method.options(stream=True).remote(*args)
        try:
            head = await asyncio.wait_for(gen.__anext__(), settings.request_timeout_s)
            return head, gen
        except TimeoutError:
            gen.cancel()
            raise UpstreamTimeout(f"no answer within {settings.request_timeout_s:g}s") from None
        except RETRYABLE as exc:
            gen.cancel()
            if attempt == retry.attempts:
                raise ServiceUnavailable("the model replica is unavailable; retry later") from exc
            logger.warning("replica failed before answering (attempt %d/%d): %s", attempt, retry.attempts, exc)
            await asyncio.sleep(jittered(min(delay, retry.max_backoff_s)))
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
