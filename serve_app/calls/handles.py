"""Calls on deployment (and actor) handles — the only place of the app that makes them: one call awaited within
a deadline, so that cancelling the caller cancels the call on the replica too; the start of a streaming call
with a deadline and retries before its first item. Every call has a deadline: a replica that never answers
(wedged, or a request queued behind a deployment that has no replica) must not hold its caller forever.

A streaming call's start is retried under the app's retry policy (calls/retry.py, run by tenacity). The
decision of what may be retried stays here, in the attempt: a failure before the stream's first item on a
replica that died is raised as one of ``RETRYABLE``, everything else (its deadline, an overloaded deployment,
the application's own error) as something the policy does not retry; and every failed attempt cancels its
own stream before the policy sees its failure."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import exceptions as ray_exc
from ray.serve import exceptions as serve_exc

from serve_app.calls.retry import RetryPolicy
from serve_app.config.settings import IngressSettings, RetrySettings
from serve_app.errors import ServiceUnavailable, UpstreamTimeout

logger = logging.getLogger("ray.serve")

# The replica died or was unreachable before it produced anything: the request had no effect and is safe
# to send again. Ray Serve's router already retries rejections and picks live replicas; this covers a
# replica that dies after it accepted the request.
RETRYABLE = (ray_exc.ActorDiedError, ray_exc.ActorUnavailableError, ray_exc.RayActorError)


def replica_policy(s: RetrySettings) -> RetryPolicy:
    """``ingress.retry`` for calls whose replica died before answering: jittered, since every request on that
    replica fails at once."""
    return RetryPolicy(s.attempts, s.backoff_s, s.max_backoff_s, jitter=True, retry_on=RETRYABLE)


# The deadline of a call whose caller names none: the default request deadline, long enough for the longest
# legitimate call (embedding an ingest batch). Callers that know their own deadline pass it.
DEFAULT_TIMEOUT_S: float = IngressSettings.model_fields["request_timeout_s"].default


def handle_of(deployment: str, app: str):
    """A handle to ``deployment`` of the application ``app`` (another component's: serve_app/config/apps.py),
    made without asking Serve's controller whether it exists yet: Serve builds the applications of a config
    concurrently, and a lookup that checks raises while the other one is still being built. Calls through it
    wait for a replica like any handle's, bounded by each call's own deadline."""
    from ray import serve

    return serve.get_deployment_handle(deployment, app, _check_exists=False)


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


async def open_call(method, args: tuple, settings: IngressSettings,
                    timeout_s: float | None = None) -> tuple[dict[str, Any], Any]:
    """Start a streaming handle call and wait for its head (at most ``timeout_s``; None: the request's
    deadline). Returns (head, response generator)."""
    policy = replica_policy(settings.retry)
    timeout_s = settings.request_timeout_s if timeout_s is None else timeout_s

    def log(attempt: int, exc: BaseException, _wait_s: float) -> None:
        logger.warning("replica failed before answering (attempt %d/%d): %s", attempt, policy.attempts, exc)

    try:
        return await policy.run_async(lambda: _start(method, args, timeout_s), on_retry=log)
    except RETRYABLE as exc:  # the last attempt's
        raise ServiceUnavailable("the model replica is unavailable; retry later") from exc


async def _start(method, args: tuple, timeout_s: float) -> tuple[dict[str, Any], Any]:
    """One attempt: the call started and its head awaited. A failed attempt cancels its own stream."""
    gen = method.options(stream=True).remote(*args)
    try:
        head = await asyncio.wait_for(gen.__anext__(), timeout_s)
        return head, gen
    except TimeoutError:
        gen.cancel()
        raise UpstreamTimeout(f"no answer within {timeout_s:g}s") from None
    except (serve_exc.BackPressureError, serve_exc.DeploymentUnavailableError) as exc:
        gen.cancel()
        raise ServiceUnavailable("the model deployment is overloaded or unavailable; retry later") from exc
    except BaseException:
        gen.cancel()
        raise


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
