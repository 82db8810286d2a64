"""The release side of an Ingress replica: which release it serves (exported as ``serve_app_release_info``),
the canary split while a canary is out and the reporting of its counts, and the release controller's actor
(the admin routes' and the audit's counterpart), looked up on first use."""

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

logger = logging.getLogger("ray.serve")


class ReleaseSide:
    def __init__(self, release: str, primary: DeploymentHandle | None, report_period_s: float,
                 controller_lookup: Callable[[], Any] | None = None):
        """``primary``: the first model's LLM handle, a canary's counterpart. ``controller_lookup`` finds (or
        starts) the release controller's actor (a blocking Ray call: run it off the event loop)."""
        self.primary, self.report_period_s = primary, report_period_s
        self._lookup, self._controller = controller_lookup, None
        self.router: CanaryRouter | None = None
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

    def set_canary(self, canary: dict[str, Any] | None, canary_handle: Callable[[str], Any]) -> None:
        """The canary split of the ingress's ``user_config`` (None: no canary out). ``canary_handle(app)`` gives
        the canary application's LLM handle."""
        if not canary or self.primary is None:
            self.router = None
        elif self.router is None or self.router.release != int(canary["release"]) \
                or self.router.share != float(canary["share"]):
            self.router = CanaryRouter(self.primary, canary_handle(canary["app"]), float(canary["share"]),
                                       int(canary["release"]))

    def canary_reporter(self) -> None:
        """Send the canary counts to the release controller every ``report_period_s`` while a canary is out."""
        if self._reporter is None or self._reporter.done():
            self._reporter = asyncio.get_running_loop().create_task(self._report_canary())

    async def _report_canary(self) -> None:
        router = self.router
        while router is not None:
            await asyncio.sleep(self.report_period_s)
            data = router.flush()
            if data is not None:
                try:
                    controller = await asyncio.to_thread(self.controller)
                    await call(controller, "canary_report", router.release, data, timeout_s=10)
                except Exception:
                    logger.warning("could not report canary counts to the release controller", exc_info=True)
                    self.forget_controller()
            if self.router is not router:
                router = self.router

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
