"""What Serve itself says of the replicas of the models that scale to zero.

A handle call to a deployment with no replica makes Serve start one (its cold-start path), and every call
counts as load in its autoscaling metrics. So nothing but a client's request may call a model that scales to
zero (``autoscaling_config.min_replicas: 0``, handed to the ingress as ``user_config``: config/apps.py): its
health record, its availability gate, its ``/v1/models`` card and its replica gauge come from Serve's own
application details instead (the replicas' states and the target), read here. The reads are shared: one call
to Serve's controller answers every model for ``max_age_s``.

A request that finds such a model with no running replica is a cold start: Serve queues it and starts a
replica (``ScaleToZero.wake``: counted once per start, timed until a replica answers).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from serve_app.config.components import component_app
from serve_app.observability.metrics import metric

logger = logging.getLogger("ray.serve")

# Serve's deployment statuses that mean its replicas cannot start or keep failing their health checks.
_FAILED = ("UNHEALTHY", "DEPLOY_FAILED")
# Health states of a model that is not answering only because it scaled to zero, or is starting from zero:
# neither fails readiness nor closes the model's availability gate.
UP = ("ok", "scaled_to_zero", "starting")


@dataclass(frozen=True)
class ReplicaCount:
    running: int  # replicas in state RUNNING
    target: int  # what Serve's autoscaler currently wants
    status: str  # Serve's status of the deployment

    def health(self) -> dict[str, Any]:
        """The model's health record as /healthz shows it, from Serve's view alone."""
        out: dict[str, Any] = {"replicas": self.running, "target_replicas": self.target, "serve_status": self.status}
        if self.status in _FAILED:
            return {"status": "unhealthy", "error": f"Serve reports the deployment {self.status}", **out}
        if self.running:
            return {"status": "ok", **out}
        return {"status": "starting" if self.target else "scaled_to_zero", **out}


def _serve_details() -> dict[str, Any]:
    from ray.serve.context import _get_global_client

    return _get_global_client().get_serve_details()


def _value(state: Any) -> Any:
    return getattr(state, "value", state)  # Serve's enums, or their values once serialised


def counts_of(details: dict[str, Any]) -> dict[tuple[str, str], ReplicaCount]:
    """(application, deployment) -> its replica count, from Serve's application details."""
    out = {}
    for app_name, app in (details.get("applications") or {}).items():
        for name, d in (app.get("deployments") or {}).items():
            replicas = d.get("replicas") or []
            running = sum(1 for r in replicas if _value(r.get("state")) == "RUNNING")
            target = d.get("target_num_replicas")
            out[(app_name, name)] = ReplicaCount(running, running if target is None else int(target),
                                                 str(_value(d.get("status")) or ""))
    return out


class ServeReplicas:
    def __init__(self, read: Callable[[], dict[str, Any]] = _serve_details, max_age_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        """``read``: Serve's application details (blocking; run off the event loop)."""
        self._read, self.max_age_s, self._clock = read, max_age_s, clock
        self._counts: dict[tuple[str, str], ReplicaCount] = {}
        self.read_at: float | None = None  # when Serve's view was last read
        self._lock = asyncio.Lock()

    async def count(self, app: str, deployment: str) -> ReplicaCount | None:
        """The deployment's replica count, read again when the last read is older than ``max_age_s``."""
        async with self._lock:
            if self.read_at is None or self._clock() - self.read_at > self.max_age_s:
                self._counts = counts_of(await asyncio.to_thread(self._read))
                self.read_at = self._clock()
        return self._counts.get((app, deployment))

    def last(self, app: str, deployment: str) -> ReplicaCount | None:
        """The last count read (None: none yet); never waits."""
        return self._counts.get((app, deployment))


class ScaleToZero:
    """The models that may scale to zero (set by each release: ``set``), what Serve says of their replicas, and
    their cold starts under way. A cold start is woken once, by a ``health`` call that stays queued at Serve
    until a replica answers it: requests that find the model cold share it, and one whose own deadline passes
    (503) leaves it running, so the replica still comes up for the next request."""

    def __init__(self, app: str, deployments: dict[str, str], replicas: ServeReplicas | None = None,
                 clock: Callable[[], float] = time.monotonic):
        """``app``: the plain application's name; ``deployments``: served name -> its LLM deployment."""
        self.app, self.deployments, self._clock = app, deployments, clock
        self.replicas = replicas or ServeReplicas()
        self.models: set[str] = set()
        self.last_start_s: dict[str, float] = {}  # how long each model's last cold start took
        self._waking: dict[str, asyncio.Task] = {}
        self._started_at: dict[str, float] = {}  # when each model's last cold start ended

    def set(self, names: Any) -> None:
        self.models = {n for n in names or () if n in self.deployments}

    def __contains__(self, model: object) -> bool:
        return model in self.models

    def _where(self, model: str) -> tuple[str, str]:
        deployment = self.deployments[model]
        return component_app(self.app, deployment), deployment

    async def health(self, model: str) -> dict[str, Any]:
        """The model's health record, from Serve's view of its replicas (no call to the model)."""
        count = await self.replicas.count(*self._where(model))
        if count is None:
            return {"status": "unhealthy", "error": "Serve reports no such deployment"}
        metric("serve_app_model_replicas").set(count.running, tags={"model": model})
        return count.health()

    def cold(self, model: str) -> bool:
        """Whether a request for ``model`` finds no replica running, by the last view of it."""
        if model not in self.models:
            return False
        count = self.replicas.last(*self._where(model))
        started = self._started_at.get(model)
        # A start that ended after the last read of Serve's view has left a replica the view does not show yet.
        if started is not None and (self.replicas.read_at is None or started >= self.replicas.read_at):
            return False
        return count is not None and count.running == 0

    def wake(self, model: str, probe: Callable[[], Awaitable[Any]]) -> None:
        """Start ``model``'s cold start (``probe``: its health call) unless one is under way."""
        task = self._waking.get(model)
        if task is not None and not task.done():
            return
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

        self._waking[model] = asyncio.get_running_loop().create_task(run(), name=f"wake:{model}")

    def retry_after_s(self, model: str) -> float:
        """What a request refused during a cold start is told to wait: the model's last start, else 10 s."""
        return self.last_start_s.get(model, 10.0)
