"""The Ingress deployment: the public HTTP API. It holds no routes of its own (they are one router per resource
in serve_app/ingress/routes); its constructor builds what the routes and the middleware work with, from its
part of the settings and the handles of the other deployments, and ``reconfigure`` applies what the release
controller changes without a restart (the release number, a canary's traffic split).

The FastAPI app is built by the replica after its constructor (Serve's late-bound ingress,
``__serve_build_asgi_app__``), so the app that serves is the one whose ``state`` the replica fills: Serve
serves a pickled copy of an app handed to ``@serve.ingress(app)``, which does not see state set later."""

from __future__ import annotations

import logging
import os
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.config.parts import code_actor_options, deployment_settings
from serve_app.ingress.admin_gate import AdminGate, admin_key_digest
from serve_app.ingress.context import IngressContext
from serve_app.ingress.fastapi_app import create_app
from serve_app.ingress.limits import RateLimiter, load_keys
from serve_app.ingress.routes.health import health_monitor

logger = logging.getLogger("ray.serve")


def _find_release_controller():
    from serve_app.release.controller import get_controller

    return get_controller(serve.get_replica_context().app_name)


@serve.deployment(name="Ingress", max_ongoing_requests=256, ray_actor_options=code_actor_options("Ingress"))
@serve.ingress()
class Ingress:
    def __init__(
        self,
        llms: dict[str, DeploymentHandle] | None,
        settings: dict[str, Any] | None,
        vector: DeploymentHandle | None = None,
        embedder: DeploymentHandle | None = None,
        agent: DeploymentHandle | None = None,
    ):
        s = self.settings = deployment_settings(settings, "Ingress")
        self.context = IngressContext(s, llms, vector, embedder, agent, controller_lookup=_find_release_controller)
        # API keys of the public API: off unless a key file is given (ingress/limits.py). An unreadable or
        # invalid file fails the replica's start with the reason, so a release carrying it is rolled back.
        keys_file = os.environ.get("SERVE_APP_API_KEYS_FILE")
        self._api_keys = load_keys(keys_file) if keys_file else None
        served = set(self.context.models) | set(self.context.adapters) | {self.context.embedder_name()}
        for entry in (self._api_keys or {}).values():
            unknown = sorted(set(entry.models or ()) - served)
            if unknown:  # not fatal: the key file outlives releases that add and remove models
                logger.warning("API key %s allows model(s) this release does not serve: %s", entry.name, unknown)
        self._admin = AdminGate(admin_key_digest(), self.context.release_controller)
        self._app = None

    def __serve_build_asgi_app__(self):
        """The replica's FastAPI app, with what its routes (``context``) and middleware read in its state."""
        app = self._app = create_app()
        app.state.context = self.context
        app.state.max_body_bytes = self.settings.ingress.max_body_bytes
        app.state.api_keys = self._api_keys
        app.state.limiter = RateLimiter()
        app.state.admin = self._admin
        app.state.admin_gate = self._admin.check_scope
        app.state.health = health_monitor(self.context, self._admin.digest is not None)
        try:
            # Serve builds the app on the replica's event loop: probing starts with the replica, so its first
            # /healthz finds records. (Without a running loop, the first /healthz starts it.)
            app.state.health.start()
        except RuntimeError:
            pass
        app.state.release = self.context.release
        return app

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        # Set by the release controller through user_config, so no restart (release/controller.py): the release
        # number, while a canary is out its application and share of LLM traffic (ingress/canary.py), and the
        # LoRA adapters.
        self.context.set_release(str(user_config.get("release") or self.settings.release))
        if self._app is not None:
            self._app.state.release = self.context.release
        self.context.set_canary(user_config.get("canary"), lambda name: serve.get_deployment_handle("LLMServer", name))
        # The LoRA adapters of every model (serve_app/config/parts.py): requests may name them from now on.
        self.context.set_adapters(user_config.get("adapters"))
