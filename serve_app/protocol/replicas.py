"""Serve's application details read as replica counts: how many replicas of a deployment run, what Serve's
autoscaler wants, and whether the deployment may scale to zero (its deployed ``min_replicas``). The ingress
reads them for the models it must not call (serve_app/ingress/replicas.py), the release watch for the models
it must not probe (serve_app/release/rollout.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    min_replicas: int | None = None  # the deployed autoscaling_config's (None: no autoscaling)

    @property
    def scales_to_zero(self) -> bool:
        return self.min_replicas == 0

    def health(self) -> dict[str, Any]:
        """The model's health record as /healthz shows it, from Serve's view alone."""
        out: dict[str, Any] = {"replicas": self.running, "target_replicas": self.target, "serve_status": self.status}
        if self.status in _FAILED:
            return {"status": "unhealthy", "error": f"Serve reports the deployment {self.status}", **out}
        if self.running:
            return {"status": "ok", **out}
        return {"status": "starting" if self.target else "scaled_to_zero", **out}


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
            auto = (d.get("deployment_config") or {}).get("autoscaling_config") or {}
            out[(app_name, name)] = ReplicaCount(running, running if target is None else int(target),
                                                 str(_value(d.get("status")) or ""), auto.get("min_replicas"))
    return out
