"""Calls on deployment handles: the start of a streaming call with a deadline and retries before its first
item, and awaiting a response so that cancelling the caller cancels the call on the replica too."""

from __future__ import annotations

import asyncio
import logging
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
