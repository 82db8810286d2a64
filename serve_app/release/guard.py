"""What a release may change without ``releases.allow_code_changes``: data, never code.

The admin key (or an API key with the ``admin`` scope) deploys releases. Unguarded, a release could make the
cluster run any code: another engine factory (an import path), vLLM flags that load remote code, plugins or
templates from a path, a runtime_env that installs packages or puts a folder on ``PYTHONPATH``, a request
router or autoscaling policy by import path. Unless the *running* config sets ``releases.allow_code_changes``,
a release may change these only to values that load no new code:

- ``engine.factory``: none (vLLM), its current value, or one of the running config's
  ``releases.engine_factories`` (registered by whoever deployed the running config from a file);
- ``engine.extra_args``: flags of ``SAFE_VLLM_FLAGS`` with plain values (no paths), or flag/value pairs the
  running config already has;
- ``model.chat_template``: unchanged (it is a file on the nodes);
- ``runtime_env`` (the application's and each deployment's ``ray_actor_options``): only ``env_vars``, and no
  variable that changes what code a process loads (``CODE_ENV``);
- import paths (``import_path``, request routers, autoscaling policies, deployment actors): unchanged;
- ``releases.allow_code_changes`` and ``releases.engine_factories`` themselves: unchanged.

A value equal to what runs is always allowed, so the running config can be sent back as it is. Every check
answers from its arguments alone (no Serve, no I/O); the controller raises the first refusal as a 403 naming
the field, and the admin gate has already audited the call.
"""

from __future__ import annotations

import re
from typing import Any

from serve_app.config.settings import AppSettings
from serve_app.errors import Forbidden

# vLLM flags that tune an engine without loading anything: sizes, schedules, caches, dtypes, logging. Each
# maps to whether it takes a value. Left out on purpose: --trust-remote-code, --tokenizer, --*-plugin*,
# --chat-template, --tool-parser-plugin, --reasoning-parser(-plugin), --generation-config, --download-dir,
# --load-format, --model-loader-extra-config, --worker-cls, --worker-extension-cls, --allowed-local-media-path,
# --override-* (JSON handed to model code), --hf-overrides, --quantization (may pull kernels by name).
SAFE_VLLM_FLAGS: dict[str, bool] = {
    "--max-num-batched-tokens": True, "--max-num-seqs": True, "--max-model-len": True, "--block-size": True,
    "--swap-space": True, "--cpu-offload-gb": True, "--kv-cache-dtype": True, "--dtype": True, "--seed": True,
    "--max-logprobs": True, "--max-num-partial-prefills": True, "--max-long-partial-prefills": True,
    "--long-prefill-token-threshold": True, "--scheduling-policy": True, "--gpu-memory-utilization": True,
    "--max-seq-len-to-capture": True, "--max-loras": True, "--max-lora-rank": True, "--max-cpu-loras": True,
    "--enable-prefix-caching": False, "--no-enable-prefix-caching": False, "--enable-chunked-prefill": False,
    "--no-enable-chunked-prefill": False, "--enforce-eager": False, "--disable-log-stats": False,
    "--disable-sliding-window": False, "--disable-cascade-attn": False, "--async-scheduling": False,
}
# A flag's value: a number or a name; never a path, URL or JSON (those are how code or files come in).
_PLAIN_VALUE = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")

# Environment variables that decide what code a process loads or runs (interpreter, loader, Ray's and
# vLLM's hooks and plugins, remote-code switches).
CODE_ENV_PREFIXES = ("PYTHON", "LD_", "DYLD_", "RAY_", "VLLM_PLUGIN", "TRITON_", "TORCHINDUCTOR_")
CODE_ENV = {"PATH", "BASH_ENV", "ENV", "SHELL", "PERL5LIB", "NODE_OPTIONS", "VLLM_PLUGINS",
            "VLLM_ALLOW_INSECURE_SERIALIZATION", "VLLM_USE_MODELSCOPE", "HF_HUB_TRUST_REMOTE_CODE",
            "TRANSFORMERS_TRUST_REMOTE_CODE"}


class CodeChangeRefused(Forbidden):
    """A release that would change code while the running config does not allow it (403)."""

    code = "code_change_not_allowed"


def refused(field: str, why: str) -> CodeChangeRefused:
    return CodeChangeRefused(f"{field}: {why}; this release would change code the cluster runs, which the running "
                             "config does not allow (releases.allow_code_changes is off)", field)


def check_release(current: dict[str, Any], new: dict[str, Any], app: str) -> None:
    """Raise the first refusal (Forbidden naming the field) of ``new`` (a whole plain config) against
    ``current`` (what runs), unless the running config allows code changes."""
    old_app, new_app = _app(current, app), _app(new, app)
    old, settings = AppSettings.model_validate(old_app.get("args") or {}), AppSettings.model_validate(new_app.get("args") or {})
    if old.releases.allow_code_changes:
        return
    problems = _settings_problems(old, settings) + _serve_problems(old_app, new_app)
    if problems:
        raise refused(*problems[0])


def _app(config: dict[str, Any], app: str) -> dict[str, Any]:
    return next((a for a in config.get("applications") or [] if a.get("name") == app), {})


def _settings_problems(old: AppSettings, new: AppSettings) -> list[tuple[str, str]]:
    out = []
    if new.releases.allow_code_changes != old.releases.allow_code_changes:
        out.append(("releases.allow_code_changes", "the policy itself is set where the app is deployed from a file"))
    if new.releases.engine_factories != old.releases.engine_factories:
        out.append(("releases.engine_factories", "engine factories are registered where the app is deployed from "
                    "a file"))
    before = old.served_models()
    for i, (deployment, served) in enumerate(new.served_models().items()):
        prior = before.get(deployment)
        where = "" if i == 0 else f"models[{i - 1}]."
        factory = served.engine.factory
        if factory and factory != (prior and prior.engine.factory) and factory not in old.releases.engine_factories:
            out.append((f"{where}engine.factory", f"{factory!r} is not a registered engine factory "
                        f"(releases.engine_factories: {old.releases.engine_factories or 'none'})"))
        known = _flag_pairs(prior.engine.extra_args) if prior else set()
        bad = _unsafe_flag(served.engine.extra_args, known)
        if bad:
            out.append((f"{where}engine.extra_args", bad))
        template = served.model.chat_template
        if template is not None and template != (prior and prior.model.chat_template):
            out.append((f"{where}model.chat_template", "a chat template is a file on the nodes; it cannot change "
                        "in a release"))
    return out


def _flag_pairs(args: list[str]) -> set[tuple[str, str | None]]:
    """(flag, value) pairs of a `vllm serve` argument list (value None for a bare flag or a stray token)."""
    out, i = set(), 0
    while i < len(args):
        flag, eq, value = args[i].partition("=")
        if not eq and i + 1 < len(args) and not args[i + 1].startswith("-"):
            value, i = args[i + 1], i + 1
        out.add((flag, value if (eq or value) else None))
        i += 1
    return out


def _unsafe_flag(args: list[str], known: set[tuple[str, str | None]]) -> str | None:
    """Why ``args`` are refused (None: allowed): the first pair that is neither already running nor a safe
    flag with a plain value."""
    for flag, value in sorted(_flag_pairs(args) - known, key=str):
        if flag not in SAFE_VLLM_FLAGS:
            return f"the vLLM flag {flag!r} is not one a release may set (allowed: see SAFE_VLLM_FLAGS in docs)"
        if SAFE_VLLM_FLAGS[flag] != (value is not None):
            return f"the vLLM flag {flag!r} {'needs' if SAFE_VLLM_FLAGS[flag] else 'takes no'} value"
        if value is not None and not _PLAIN_VALUE.match(value):
            return f"the value of {flag} must be a number or a name (no paths, URLs or JSON)"
    return None


def _code_env(name: str) -> bool:
    return name in CODE_ENV or name.startswith(CODE_ENV_PREFIXES)


def _runtime_env_problems(field: str, old: Any, new: Any) -> list[tuple[str, str]]:
    old, new = old if isinstance(old, dict) else {}, new if isinstance(new, dict) else {}
    out = []
    for key in sorted(set(old) | set(new)):
        if key != "env_vars" and old.get(key) != new.get(key):
            out.append((f"{field}.{key}", "a runtime_env may only change plain environment variables (env_vars)"))
    old_env, new_env = old.get("env_vars") or {}, new.get("env_vars") or {}
    for name in sorted(new_env):
        if new_env[name] != old_env.get(name) and _code_env(str(name)):
            out.append((f"{field}.env_vars.{name}", "this variable changes what code a process loads"))
    return out


def _serve_problems(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str]]:
    """Import paths and runtime_envs of the Serve config (the application's and its deployments')."""
    out = []
    for key in ("import_path", "autoscaling_policy"):
        if old.get(key) != new.get(key):
            out.append((key, "an import path cannot change in a release"))
    out += _runtime_env_problems("runtime_env", old.get("runtime_env"), new.get("runtime_env"))
    before = {d.get("name"): d for d in old.get("deployments") or []}
    for d in new.get("deployments") or []:
        prior, where = before.get(d.get("name")) or {}, f"deployments.{d.get('name')}"
        imports = {
            "request_router_config.request_router_class":
                lambda e: (e.get("request_router_config") or {}).get("request_router_class"),
            "autoscaling_config.policy": lambda e: (e.get("autoscaling_config") or {}).get("policy"),
            "deployment_actors": lambda e: e.get("deployment_actors"),
        }
        for key, read in imports.items():
            if read(d) != read(prior):
                out.append((f"{where}.{key}", "an import path cannot change in a release"))
        out += _runtime_env_problems(f"{where}.ray_actor_options.runtime_env",
                                     (prior.get("ray_actor_options") or {}).get("runtime_env"),
                                     (d.get("ray_actor_options") or {}).get("runtime_env"))
    return out
