"""The release controller as the cluster's detached Ray actor (``Releases`` of release/controller.py, the
history in the state store, the Serve it runs in), and how the ingress and ``serve-app run`` find it."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import ray

from serve_app.release.controller import Releases
from serve_app.release.gateway import RayServeGateway
from serve_app.release.history import History
from serve_app.state import store

CONTROLLER_NAME = "serve_app_release_controller"
NAMESPACE = "serve_app"


@ray.remote(num_cpus=0, max_restarts=-1)
class ReleaseController(Releases):
    """``Releases`` as the cluster's detached actor: the history in the state directory, the Serve it runs in."""

    def __init__(self, app_name: str, state_dir: str | None = None):
        # The one process that migrates the state store (serve_app/state/store.py): one actor per cluster.
        super().__init__(app_name, History(store.open_store() if state_dir is None else state_dir),
                         RayServeGateway())

    # An async actor runs its plain methods on its event loop: those that read or write SQLite run in a
    # thread instead, so a slow disk never holds up /healthz's probe or a canary's counts. They become async,
    # which ``Releases`` does not promise: the actor is called only through its handle (every call is
    # awaited there), and ``Releases`` itself calls them on the class (``Releases.audit``), never on self.
    async def releases(self) -> list[dict[str, Any]]:  # type: ignore[override]  # async on the actor: above
        return await asyncio.to_thread(Releases.releases, self)

    async def config(self) -> dict[str, Any]:  # type: ignore[override]  # async on the actor: above
        return await asyncio.to_thread(Releases.config, self)

    async def release(self, n: int) -> dict[str, Any]:  # type: ignore[override]  # async on the actor: above
        return await asyncio.to_thread(Releases.release, self, n)

    async def audit(  # type: ignore[override]  # async on the actor: above
        self, actor: str, action: str, allowed: bool, detail: str | None = None
    ) -> None:
        await asyncio.to_thread(Releases.audit, self, actor, action, allowed, detail)

    async def audit_log(self) -> list[dict[str, Any]]:  # type: ignore[override]  # async on the actor: above
        return await asyncio.to_thread(Releases.audit_log, self)

    async def adapters(self) -> list[dict[str, str]]:  # type: ignore[override]  # async on the actor: above
        return await asyncio.to_thread(Releases.adapters, self)

    async def started_from(  # type: ignore[override]  # async on the actor: above
        self, config: dict, actor: str = "serve-app run"
    ) -> int:
        return await asyncio.to_thread(Releases.started_from, self, config, actor)


def get_controller(app_name: str, env_vars: dict[str, str] | None = None):
    """The cluster's release controller, created on first use (``env_vars``: its environment's additions, the
    app's own runtime_env variables when ``serve-app run`` creates it; a replica's actors inherit its own)."""
    # mypy ignores class decorators: it sees the plain class where @ray.remote made an actor class.
    actor_class = cast("ray.actor.ActorClass", ReleaseController)
    options: dict[str, Any] = {"name": CONTROLLER_NAME, "namespace": NAMESPACE, "lifetime": "detached",
                               "get_if_exists": True}
    if env_vars:
        options["runtime_env"] = {"env_vars": dict(env_vars)}
    return actor_class.options(**options).remote(app_name)
