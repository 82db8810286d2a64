"""The Ingress deployment: the public HTTP API. Routes live in their modules (thin: validate, call a
deployment, relay); this class holds the deployment handles they use and the health endpoints."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.calls.handles import awaited
from serve_app.config.parts import CODE_ACTOR_OPTIONS, deployment_settings
from serve_app.errors import ServiceUnavailable, unwrap
from serve_app.ingress.admin_routes import AdminRoutes, admin_key_digest
from serve_app.ingress.answer_routes import AnswerRoutes
from serve_app.ingress.availability import Availability
from serve_app.ingress.fastapi_app import app
from serve_app.ingress.limits import RateLimiter, load_keys
from serve_app.ingress.openai_routes import OpenAIRoutes
from serve_app.ingress.retrieval_routes import RetrievalRoutes
from serve_app.llm.client import LLMClient
from serve_app.observability.metrics import metric
from serve_app.rag.pipeline import RagPipeline
from serve_app.release.canary import CanaryRouter

logger = logging.getLogger("ray.serve")


def _node_metrics_url() -> str:
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node["NodeID"] == node_id and node.get("MetricsExportPort"):
            return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    raise ServiceUnavailable("this Ray node exports no metrics (no metrics export port)")


@serve.deployment(name="Ingress", max_ongoing_requests=256, ray_actor_options=dict(CODE_ACTOR_OPTIONS["Ingress"]))
@serve.ingress(app)
class Ingress(OpenAIRoutes, RetrievalRoutes, AnswerRoutes, AdminRoutes):
    def __init__(
        self,
        llm: DeploymentHandle | None,
        settings: dict[str, Any] | None,
        vector: DeploymentHandle | None = None,
        embedder: DeploymentHandle | None = None,
        agent: DeploymentHandle | None = None,
    ):
        s = self.settings = deployment_settings(settings)
        self.llm, self.vector, self.embedder, self.agent = llm, vector, embedder, agent
        self.rag = None
        if llm is not None and s.rag.enabled:
            search = self._search if vector is not None else None
            self.rag = RagPipeline(LLMClient(llm, s.model.name, s.ingress), search, s.rag, s.prompts)
        app.state.max_body_bytes = s.ingress.max_body_bytes
        # API keys of the public API: off unless a key file is given (ingress/limits.py). An unreadable or
        # invalid file fails the replica's start with the reason, so a release carrying it is rolled back.
        keys_file = os.environ.get("SERVE_APP_API_KEYS_FILE")
        app.state.api_keys = load_keys(keys_file) if keys_file else None
        app.state.limiter = RateLimiter()
        self.release = s.release
        self._admin_digest = admin_key_digest()
        app.state.admin_gate = self.admin_gate
        self._controller = None
        self.router: CanaryRouter | None = None
        self._reporter: asyncio.Task | None = None
        self._metrics_url: str | None = None
        self._llm_availability = Availability(lambda: awaited(self.llm.health.remote()), 2.0, s.ingress.health_timeout_s,
                                              s.ingress.llm_fail_fast_s) if llm is not None else None
        self._set_release(s.release)

    def _set_release(self, release: str) -> None:
        # Also refreshed on every /healthz and /metrics call: a value set only in the constructor was not
        # exported by Ray 2.60's agent (values set while handling requests are).
        info = metric("serve_app_release_info")
        if getattr(self, "_shown_release", None) not in (None, release):
            info.set(0, tags={"release": self._shown_release})
        info.set(1, tags={"release": release})
        self._shown_release = self.release = app.state.release = release

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        # Set by the release controller through user_config, so no restart (release/controller.py): the release
        # number, and while a canary is out, its application and share of LLM traffic (release/canary.py).
        self._set_release(str(user_config.get("release") or self.settings.release))
        canary = user_config.get("canary")
        if not canary or self.llm is None:
            self.router = None
        elif self.router is None or self.router.release != int(canary["release"]) \
                or self.router.share != float(canary["share"]):
            handle = serve.get_deployment_handle("LLMServer", canary["app"])
            self.router = CanaryRouter(self.llm, handle, float(canary["share"]), int(canary["release"]))

    def _canary_reporter(self) -> None:
        """Send the canary counts to the release controller every 2 s while a canary is out."""
        if self._reporter is None or self._reporter.done():
            self._reporter = asyncio.get_running_loop().create_task(self._report_canary())

    async def _report_canary(self) -> None:
        router = self.router
        while router is not None:
            await asyncio.sleep(2.0)
            data = router.flush()
            if data is not None:
                try:
                    await asyncio.wait_for(self._release_controller().canary_report.remote(router.release, data), 10)
                except Exception:  # noqa: BLE001 - the counts of one interval are lost; serving goes on
                    logger.warning("could not report canary counts to the release controller", exc_info=True)
            if self.router is not router:
                router = self.router

    def _llm_gate(self) -> None:
        """Refuse an LLM request at once (503) while the LLM has had no healthy replica for a while."""
        if self._llm_availability is not None:
            self._llm_availability.check()

    async def _search(self, query: str, top_k: int, filter_: dict[str, Any] | None) -> list[dict[str, Any]]:
        return await awaited(self.vector.search.remote(query, top_k, filter_, None))

    async def _probe(self, call) -> dict[str, Any]:
        try:
            # awaited(): a probe that times out is cancelled, not left queued for a replica that may never come.
            detail = await asyncio.wait_for(awaited(call), self.settings.ingress.health_timeout_s)
            return {"status": "ok", **detail}
        except asyncio.TimeoutError:
            return {"status": "unhealthy", "error": "health probe timed out"}
        except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
            cause = unwrap(exc)
            return {"status": "unhealthy", "error": f"{type(cause).__name__}: {cause}"[:300]}

    @app.get("/healthz")
    async def healthz(self):
        probes = {}
        if self.llm is not None:
            probes["llm"] = self.llm.health.remote()
        if self.vector is not None:
            probes["vector"] = self.vector.health.remote()
            probes["embedder"] = self.embedder.info.remote()
        if self.agent is not None:
            probes["agent"] = self.agent.health.remote()
        if self._admin_digest is not None:
            # The release controller is required once the admin API is on (it watches and rolls back releases).
            probes["release_controller"] = self._release_controller().health.remote()
        self._set_release(self.release)
        results = await asyncio.gather(*(self._probe(c) for c in probes.values()))
        components = dict(zip(probes, results))
        if self._llm_availability is not None and components.get("llm", {}).get("status") == "ok":
            self._llm_availability.mark_up()
        healthy = all(c["status"] == "ok" for c in components.values())
        if self._admin_digest is None:
            components["release_controller"] = {"status": "disabled", "detail": "no admin key: the admin API is off"}
        elif components["release_controller"]["status"] != "ok":
            self._controller = None  # look it up (or start it) again on the next call
        body = {"status": "ok" if healthy else "unhealthy", "release": self.release, "components": components}
        return JSONResponse(body, status_code=200 if healthy else 503)

    @app.get("/livez")
    async def livez(self):
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics(self):
        """Prometheus exposition of this node: the app's metrics (serve_app/observability/metrics.py), Ray
        Serve's and vLLM's, as Ray's metrics agent exports them. A multi-node cluster is scraped per node."""
        import httpx

        self._set_release(self.release)
        if self._metrics_url is None:
            self._metrics_url = await asyncio.to_thread(_node_metrics_url)
        try:
            async with httpx.AsyncClient(timeout=self.settings.ingress.health_timeout_s) as client:
                r = await client.get(self._metrics_url)
        except httpx.HTTPError as exc:
            self._metrics_url = None
            raise ServiceUnavailable(f"Ray's metrics agent on this node did not answer: {type(exc).__name__}") from None
        return Response(r.content, status_code=r.status_code,
                        media_type=r.headers.get("content-type", "text/plain; version=0.0.4"))

