"""The Ingress deployment: the public HTTP API. It holds no routes of its own (they are one router per resource
in serve_app/ingress/routes); its constructor builds what the routes and the middleware work with, from its
part of the settings and the handles of the other components' deployments (each in its own Serve
application, serve_app/config/apps.py), and ``reconfigure`` applies what the release controller changes
without a restart (the release number, a canary's traffic split, the LoRA adapters).

The FastAPI app is built by the replica after its constructor (Serve's late-bound ingress,
``__serve_build_asgi_app__``), so the app that serves is the one whose ``state`` the replica fills: Serve
serves a pickled copy of an app handed to ``@serve.ingress(app)``, which does not see state set later."""

from __future__ import annotations

import logging
import os
from typing import Any

from fastapi import FastAPI
from ray import serve

from serve_app.calls.handles import handle_of
from serve_app.config.components import component_app
from serve_app.config.loader import deployment_names
from serve_app.config.names import AGENT, EMBEDDER, INGRESS, VECTOR_STORE
from serve_app.config.settings import AppSettings
from serve_app.ingress.admin_gate import admin_key_digest
from serve_app.ingress.context import IngressContext
from serve_app.ingress.limits import load_keys
from serve_app.state import store

logger = logging.getLogger("ray.serve")


def _find_release_controller():
    from serve_app.release.actor import get_controller

    return get_controller(serve.get_replica_context().app_name)


@serve.deployment(name=INGRESS, max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class Ingress:
    def __init__(self, settings: dict[str, Any]):
        """``settings``: its application's args (the app's settings, each model's engine cut to what the
        ingress reads). The application it runs in is named like the plain one; the other components'
        applications are named after it (``component_app``), their handles made once, here."""
        s = self.settings = AppSettings.model_validate(settings)
        app = serve.get_replica_context().app_name
        names = deployment_names(s)

        def handle(deployment: str):
            return handle_of(deployment, component_app(app, deployment)) if deployment in names else None

        llms = {d: handle_of(d, component_app(app, d)) for d in s.served_models()}
        vector, embedder, agent = handle(VECTOR_STORE), handle(EMBEDDER), handle(AGENT)
        # API keys of the public API: the state store's, seeded from the key file (ingress/keybook.py). An
        # unreadable or invalid file fails the replica's start with the reason, so a release carrying it is
        # rolled back.
        keys_file = os.environ.get("SERVE_APP_API_KEYS_FILE")
        api_keys = load_keys(keys_file) if keys_file else None
        # Opened, not migrated: the release controller migrates the store (serve_app/state/store.py).
        engine = store.open_store(migrate_schema=False)
        self.context = IngressContext.build(s, llms, vector, embedder, agent, api_keys=api_keys,
                                            admin_digest=admin_key_digest(),
                                            controller_lookup=_find_release_controller, app=app, state=engine)
        try:
            if not self.context.keys.refresh():
                _find_release_controller()  # the store's schema comes with the controller (it migrates)
        except Exception as exc:  # noqa: BLE001 - not fatal: the key book keeps trying; until it reads, 503s
            logger.warning("cannot read the API keys from the state store %s yet: %s", store.shown(str(engine.url)),
                           type(exc).__name__)
        models = self.context.models
        served = set(models.models) | set(models.adapters) | {models.embedder_name}
        for entry in (api_keys or {}).values():
            unknown = sorted(set(entry.models or ()) - served)
            if unknown:  # not fatal: the key file outlives releases that add and remove models
                logger.warning("API key %s allows model(s) this release does not serve: %s", entry.name, unknown)
        self._app: FastAPI | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        """The replica's FastAPI app, its state the replica's context."""
        # Imported here, not with the module: the routes bring vLLM's protocol (several seconds of imports),
        # which the replica needs and Serve's build of the application (every release that changes it) does not.
        from serve_app.ingress.fastapi_app import create_app

        app = self._app = create_app(self.context)
        try:
            # Serve builds the app on the replica's event loop: probing starts with the replica, so its first
            # /healthz finds records. (Without a running loop, the first /healthz starts it.)
            self.context.health.start()
        except RuntimeError:
            pass
        try:
            self.context.keys.start()  # else the auth middleware starts it with the first request
        except RuntimeError:
            pass
        return app

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        # Set by the release controller through user_config, so no restart (release/controller.py): the release
        # number, for each model with a canary out its application and share of the model's traffic
        # (ingress/canary.py), and the LoRA adapters.
        releases = self.context.releases
        releases.set_release(str(user_config.get("release") or self.settings.release))
        releases.set_canaries(user_config.get("canaries"), handle_of)
        # The LoRA adapters of every model (serve_app/config/apps.py): requests may name them from now on.
        self.context.models.set_adapters(user_config.get("adapters"))
