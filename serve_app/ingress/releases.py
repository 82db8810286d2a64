"""The release side of an Ingress replica: which release it serves (exported as ``serve_app_release_info``),
the canary split of each model with a canary out and the reporting of their counts, and the release
controller's actor (the admin routes' and the audit's counterpart), looked up on first use."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ray.serve.handle import DeploymentHandle

from serve_app.calls.handles import call
from serve_app.errors import NotFound
from serve_app.ingress.canary import CanaryRouter
from serve_app.observability.metrics import metric
from serve_app.protocol.canary import PRIMARY

logger = logging.getLogger("ray.serve")


class ReleaseSide:
    def __init__(self, release: str, models: dict[str, DeploymentHandle], report_period_s: float,
                 controller_lookup: Callable[[], Any] | None = None):
        """``models``: each served model's LLM handle, a canary's counterpart. ``controller_lookup`` finds (or
        starts) the release controller's actor (a blocking Ray call: run it off the event loop)."""
        self.models, self.report_period_s = models, report_period_s
        self._lookup, self._controller = controller_lookup, None
        self.routers: dict[str, CanaryRouter] = {}  # served model -> its canary split
        self._reporter: asyncio.Task | None = None
        self._shown: str | None = None
        self.release = release
        self.set_release(release)

    def set_release(self, release: str) -> None:
        # Also refreshed on every /healthz and /metrics call: a value set only in the constructor was not
        # exported by Ray 2.60's agent (values set while handling requests are).
        info = metric("serve_app_release_info")
        if self._shown not in (None, release):
            info.set(0, tags={"release": self._shown})
        info.set(1, tags={"release": release})
        self._shown = self.release = release

    # -- the canary split ---------------------------------------------------------------------------------

    def set_canaries(self, canaries: dict[str, Any] | None, canary_handle: Callable[[str, str], Any]) -> None:
        """The canary splits of the ingress's ``user_config`` (served model -> {app, deployment, share,
        release}; None: no canary out). ``canary_handle(deployment, app)`` gives a canary's LLM handle."""
        routers = {}
        for model, c in (canaries or {}).items():
            primary = self.models.get(model)
            if primary is None:
                continue
            router = self.routers.get(model)
            if router is None or router.release != int(c["release"]) or router.share != float(c["share"]):
                router = CanaryRouter(primary, canary_handle(c["deployment"], c["app"]), float(c["share"]),
                                      int(c["release"]))
            routers[model] = router
        self.routers = routers

    def router_for(self, handle: Any) -> CanaryRouter | None:
        """The canary split of the model whose LLM handle is ``handle`` (None: no canary of it is out)."""
        for router in self.routers.values():
            if router.handles[PRIMARY] is handle:
                return router
        return None

    def canary_reporter(self) -> None:
        """Send the canary counts to the release controller every ``report_period_s`` while canaries are out."""
        if self._reporter is None or self._reporter.done():
            self._reporter = asyncio.get_running_loop().create_task(self._report_canaries())

    async def _report_canaries(self) -> None:
        while self.routers:
            await asyncio.sleep(self.report_period_s)
            for router in list(self.routers.values()):
                data = router.flush()
                if data is None:
                    continue
                try:
                    controller = await asyncio.to_thread(self.controller)
                    await call(controller, "canary_report", router.release, data, timeout_s=10)
                except Exception:
                    logger.warning("could not report canary counts to the release controller", exc_info=True)
                    self.forget_controller()

    # -- the release controller -----------------------------------------------------------------------------

    def controller(self) -> Any:
        """The release controller's actor handle (blocking on first use: call it off the event loop)."""
        if self._controller is None:
            if self._lookup is None:
                raise NotFound("no release controller in this deployment")
            self._controller = self._lookup()
        return self._controller

    def forget_controller(self) -> None:
        """Look the controller up again on the next call (it did not answer: restarted, or not started yet)."""
        self._controller = None
