"""The release controller's operations on what a model or deployment runs with: LoRA adapters loaded and
unloaded, replicas scaled. Each is a release of the scope that owns it (a rollback undoes it), built from the
running config; ``Releases`` (release/controller.py) has them through this mixin."""

from __future__ import annotations

import asyncio
from typing import Any

from serve_app.config.components import component_app
from serve_app.errors import AppError, ServiceUnavailable, unwrap
from serve_app.release.gateway import ServeGateway
from serve_app.release.plan import adapter_list, app_settings, release_config, scaled, with_adapter, without_adapter
from serve_app.release.scopes import MODEL, model_deployment, section_owner


class ResourceReleases:
    """Needs ``app``, ``gateway``, ``_good()``, ``_current()`` and ``deploy()``, which ``Releases`` has."""

    app: str
    gateway: ServeGateway

    def _good(self) -> dict[str, Any] | None:
        raise NotImplementedError

    def _current(self) -> dict[str, Any]:
        raise NotImplementedError

    async def deploy(self, config: dict, actor: str, note: str | None = None, kind: str = "deploy",
                     canary: dict[str, Any] | None = None, model: str | None = None, component: str | None = None,
                     *, scope: str | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def adapters(self) -> list[dict[str, str]]:
        current = self._good()
        return adapter_list(app_settings(current["config"], self.app)) if current else []

    async def load_adapter(self, model: str | None, name: str, folder: str, actor: str) -> dict[str, Any]:
        """Add an adapter to a model: checked and loaded once on one of its replicas first (a bad one is
        refused with the reason and nothing is recorded), then deployed as a release of that model."""
        current = self._current()
        new_app, model = with_adapter(current["config"], self.app, model, name, folder)
        _, settings = release_config(current["config"], {"applications": [new_app]}, self.app)  # names, counts
        deployment = model_deployment(settings, model)
        try:
            trial = await asyncio.wait_for(self.gateway.call(component_app(self.app, deployment), deployment,
                                                             "trial_adapter", folder),
                                           settings.releases.ready_timeout_s)
        except Exception as exc:  # noqa: BLE001 - the replica's own error (a 4xx) goes back to the caller
            cause = unwrap(exc)
            if isinstance(cause, AppError):
                raise cause from None
            raise ServiceUnavailable(f"the trial load on {deployment} failed: {type(cause).__name__}") from None
        out = await self.deploy({"applications": [new_app]}, actor, note=f"load adapter {name} ({folder}) on {model}",
                                kind="adapter-load", scope=MODEL + model)
        return {**out, "adapter": {"name": name, "model": model, "folder": folder, **trial}}

    async def unload_adapter(self, name: str, actor: str) -> dict[str, Any]:
        current = self._current()
        new_app, model = without_adapter(current["config"], self.app, name)
        out = await self.deploy({"applications": [new_app]}, actor, note=f"unload adapter {name} from {model}",
                                kind="adapter-unload", scope=MODEL + model)
        return {**out, "adapter": {"name": name, "model": model}}

    async def scale(self, deployment: str, replicas: int | None, factor: float | None, actor: str) -> dict[str, Any]:
        current = self._current()
        new_app, what = scaled(current["config"], self.app, deployment, replicas, factor)
        scope = section_owner(app_settings(current["config"], self.app), deployment)
        return await self.deploy({"applications": [new_app]}, actor, note=f"scale {what}", kind="scale", scope=scope)
