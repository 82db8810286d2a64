"""The retrieval tier as the ingress calls it: the VectorStore and Embedder deployments' handles, each call
within the tier's deadline, and a 404 naming the tier when the application has none."""

from __future__ import annotations

from typing import Any

from ray.serve.handle import DeploymentHandle

from serve_app.calls.handles import call
from serve_app.config.settings import VectorSettings
from serve_app.errors import NotFound, UpstreamTimeout
from serve_app.protocol.retrieval import SearchHit, SearchMode


class Retrieval:
    def __init__(self, settings: VectorSettings, vector: DeploymentHandle | None,
                 embedder: DeploymentHandle | None = None):
        self.settings, self.vector, self.embedder = settings, vector, embedder

    @property
    def enabled(self) -> bool:
        return self.vector is not None

    @property
    def embedder_name(self) -> str | None:
        """The embedding model's served name (None without the tier's embedder)."""
        return self.settings.embedder_name if self.embedder is not None else None

    def require_embedder(self) -> DeploymentHandle:
        if self.embedder is None:
            raise NotFound("the retrieval tier is disabled in this deployment")
        return self.embedder

    async def call(self, method: str, *args: Any, handle: DeploymentHandle | None = None, **kwargs: Any) -> Any:
        """``method(*args, **kwargs)`` on the vector store (or ``handle``, e.g. the embedder) within the vector
        tier's deadline; 404 when the retrieval tier is not deployed."""
        handle = handle or self.vector
        if handle is None:
            raise NotFound("the retrieval tier is disabled in this deployment")
        timeout_s = self.settings.timeout_s
        try:
            return await call(handle, method, *args, timeout_s=timeout_s, **kwargs)
        except UpstreamTimeout:  # named for the client as the tier, not as the method
            raise UpstreamTimeout(f"the vector tier did not answer within {timeout_s:g}s") from None

    async def search(self, query: str, top_k: int, filter_: dict[str, Any] | None,
                     mode: SearchMode | None, tenant: str) -> list[SearchHit]:
        # RAG bounds its search by rag.retrieval_timeout_s (and answers without sources past it); this is the
        # call's own bound.
        return await call(self.vector, "search", query, top_k, filter_, None, mode, tenant=tenant,
                          timeout_s=self.settings.timeout_s)
