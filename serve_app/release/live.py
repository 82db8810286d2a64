"""What Serve runs, as the release controller last applied it: the plain config of every scope, the canaries
routed, and the applications running next to the release (canaries, a model starting or draining).

Every Serve apply carries every live application (Serve deletes what a config leaves out), so releases of
different scopes running at once cannot each apply their own config: each changes its scope's section of the
one live config (release/scopes.py ``splice``) and applies the whole, which carries every other scope as it is
at that moment, in flight or not. Composing and handing the config to Serve happen under one lock, so the
configs reach Serve in the order they were composed (a later one always holds every earlier change).
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from serve_app.config.apps import expand
from serve_app.release.gateway import ServeGateway
from serve_app.release.plan import app_entry, label
from serve_app.release.scopes import APP, splice


def with_entry(config: dict, app: str, entry: dict) -> dict:
    """``config`` with the application ``app``'s entry replaced."""
    return {**config, "applications": [entry if a["name"] == app else a for a in config["applications"]]}


def spliced(config: dict, app: str, scope: str, source: dict) -> dict:
    """``config`` (a whole plain config) with ``scope``'s section of the application ``app`` taken from the
    whole plain config ``source``."""
    if scope == APP:
        return copy.deepcopy(source)
    return with_entry(config, app, splice(app_entry(config, app), scope, app_entry(source, app)))


class Live:
    def __init__(self, app: str, gateway: ServeGateway, config: dict | None, release: int | None):
        self.app, self.gateway = app, gateway
        self.config = config  # the plain config applied last (None: nothing applied by this controller yet)
        self.release = release  # the release number the ingress shows
        self.routes: dict[str, dict[str, Any]] = {}  # served model -> its canary's route (ingress user_config)
        self.extra: dict[str, dict[str, Any]] = {}  # application name -> its (expanded) config
        self._lock = asyncio.Lock()

    def _apps(self, config: dict | None) -> dict[str, Any]:
        if config is None:
            return {}
        return {a["name"]: a for a in expand(config)["applications"]}

    async def apply(self, scope: str | None = None, config: dict | None = None,
                    release: int | None = None) -> tuple[float, set[str]]:
        """Apply the live config, with ``scope``'s section from ``config`` first when given, labelled with
        ``release`` (default: the one shown). Returns when it was handed to Serve and the Serve applications
        whose config this changed."""
        async with self._lock:
            before = self.config
            if scope is not None and config is not None:
                self.config = config if before is None else spliced(before, self.app, scope, config)
            if release is not None:
                self.release = release
            if self.config is None:
                raise RuntimeError("nothing to apply: no release is running")
            old, new = self._apps(before), self._apps(self.config)
            changed = {name for name, a in new.items() if old.get(name) != a}
            started = await self.gateway.apply(label(self.config, self.app, self.release, self.routes,
                                                     list(self.extra.values())))
            return started, changed
