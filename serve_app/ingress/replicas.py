"""What Serve itself says of each model's replicas, so that nothing but a client request calls a model that
scales to zero.

A handle call to a deployment with no replica makes Serve start one (its cold-start path), and every call
counts as load in its autoscaling metrics. So a model whose deployed ``autoscaling_config`` has
``min_replicas: 0`` is called for a client's request alone: its health record, its availability gate, its
``/v1/models`` card and its replica gauge come from Serve's own application details instead (the deployed
config, the replicas' states and the target), read here. Which models scale to zero is read from the same
place, not from the ingress's own config: an ingress replica of an earlier release, still serving while its
successor starts, or one not yet configured, sees a release's ``min_replicas: 0`` as soon as Serve applies it.
The reads are shared: one call to Serve's controller answers every model for ``max_age_s``.

A request that finds such a model with no running replica is a cold start: Serve queues it and starts a
replica (``ScaleToZero.wake``: counted once per start, timed until a replica answers).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from serve_app.config.components import component_app
from serve_app.observability.metrics import metric
from serve_app.protocol.replicas import ReplicaCount, counts_of

logger = logging.getLogger("ray.serve")

def _serve_details() -> dict[str, Any]:
    import ray
    from ray.serve.context import _get_global_client

    if not ray.is_initialized():  # an ingress built outside Serve (unit tests): no view, models are called
        raise RuntimeError("not in a Ray cluster")
    return _get_global_client().get_serve_details()


class ServeReplicas:
    def __init__(self, read: Callable[[], dict[str, Any]] = _serve_details, max_age_s: float = 2.0,
                 wait_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        """``read``: Serve's application details (blocking: run in a thread). A view older than ``max_age_s``
        is read again, one read at a time; a caller waits for it at most ``wait_s``, then goes on with the last
        view (a slow controller delays no probe and piles up no threads)."""
        self._read, self.max_age_s, self.wait_s, self._clock = read, max_age_s, wait_s, clock
        self._counts: dict[tuple[str, str], ReplicaCount] = {}
        self.read_at: float | None = None  # when Serve's view was last read
        self._reading: asyncio.Task | None = None

    async def _refresh(self) -> None:
        try:
            self._counts = counts_of(await asyncio.to_thread(self._read))
            self.read_at = self._clock()
        except Exception as exc:  # noqa: BLE001 - the last view stands; the next caller reads again
            logger.debug("no view of Serve's replicas: %s", exc)

    async def count(self, app: str, deployment: str) -> ReplicaCount | None:
        """The deployment's replica count, from a view at most ``max_age_s`` old when Serve answers in time,
        else from the last view (None: none yet)."""
        stale = self.read_at is None or self._clock() - self.read_at > self.max_age_s
        if stale and (self._reading is None or self._reading.done()):
            self._reading = asyncio.get_running_loop().create_task(self._refresh(), name="serve-view")
        if self._reading is not None and not self._reading.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._reading), self.wait_s)
            except TimeoutError:
                pass
        return self._counts.get((app, deployment))

    def last(self, app: str, deployment: str) -> ReplicaCount | None:
        """The last count read (None: none yet); never waits."""
        return self._counts.get((app, deployment))


class ScaleToZero:
    """Serve's view of the models' replicas, which of them scale to zero, and their cold starts under way. A
    cold start is woken once, by a ``health`` call that stays queued at Serve until a replica answers it:
    requests that find the model cold share it, and one whose own deadline passes (503) leaves it running, so
    the replica still comes up for the next request."""

    def __init__(self, app: str, deployments: dict[str, str], replicas: ServeReplicas | None = None,
                 clock: Callable[[], float] = time.monotonic):
        """``app``: the plain application's name; ``deployments``: served name -> its LLM deployment."""
        self.app, self.deployments, self._clock = app, deployments, clock
        self.replicas = replicas or ServeReplicas()
        self.last_start_s: dict[str, float] = {}  # how long each model's last cold start took
        self._waking: dict[str, asyncio.Task] = {}
        self._started_at: dict[str, float] = {}  # when each model's last cold start ended

    def _where(self, model: str) -> tuple[str, str]:
        deployment = self.deployments[model]
        return component_app(self.app, deployment), deployment

    async def view(self, model: str) -> ReplicaCount | None:
        """Serve's view of the model's replicas, or the last one while Serve does not answer (None: no view
        yet: outside Serve, or never answered; the model is then treated as always on)."""
        if model not in self.deployments:
            return None
        return await self.replicas.count(*self._where(model))

    async def scales_to_zero(self, model: str) -> bool:
        count = await self.view(model)
        return count is not None and count.scales_to_zero

    def health(self, model: str, count: ReplicaCount) -> dict[str, Any]:
        """The health record of a model that scales to zero, from Serve's view alone (no call to it)."""
        metric("serve_app_model_replicas").set(count.running, tags={"model": model})
        return count.health()

    def cold(self, model: str) -> bool:
        """Whether a request for ``model`` finds it scaled to zero with no replica running, by the last view of
        it (never waits: the health monitor keeps the view fresh)."""
        if model not in self.deployments:
            return False
        count = self.replicas.last(*self._where(model))
        started = self._started_at.get(model)
        # A start that ended after the last read of Serve's view has left a replica the view does not show yet.
        if started is not None and (self.replicas.read_at is None or started >= self.replicas.read_at):
            return False
        return count is not None and count.scales_to_zero and count.running == 0

    def wake(self, model: str, probe: Callable[[], Awaitable[Any]]) -> asyncio.Task:
        """Start ``model``'s cold start (``probe``: its health call) unless one is under way; the start's task
        (it ends when a replica answers, or the start failed: then the requests' own calls say why)."""
        task = self._waking.get(model)
        if task is not None and not task.done():
            return task
        metric("serve_app_cold_starts").inc(tags={"model": model})
        began = self._clock()

        async def run() -> None:
            try:
                await probe()
            except Exception as exc:  # noqa: BLE001 - the requests waiting for it get their own error
                logger.warning("the cold start of %s failed: %s", model, exc)
                return
            self._started_at[model] = self._clock()
            self.last_start_s[model] = took = self._started_at[model] - began
            metric("serve_app_cold_start_seconds").observe(took, tags={"model": model})
            logger.info("%s started from zero replicas in %.1fs", model, took)

        task = self._waking[model] = asyncio.get_running_loop().create_task(run(), name=f"wake:{model}")
        return task

    def retry_after_s(self, model: str) -> float:
        """What a request refused during a cold start is told to wait: the model's last start, else 10 s."""
        return self.last_start_s.get(model, 10.0)
