"""Release scopes: the part of the application one release may change.

A platform team's models belong to different teams, which release them on their own schedules; a release
scoped to one model (``model:<served name>``) or one component (``component:retrieval|agent|ingress``)
changes that part of the plain application and nothing else, and two releases of two different scopes may
run at once. The whole application (``app``) is the scope of an unscoped release.

The plain application entry (serve_app/config/apps.py) is partitioned into sections, one per scope, which
put back together (``join``) give the entry again:

    scope                  args                                           deployments
    model:<name>           the first model's model/engine/lora, or its    LLMServer-<name>
                           entry of ``models``
    component:retrieval    vector                                         Embedder, VectorStore
    component:agent        agent                                          Agent
    component:ingress      every other key (ingress, rag, prompts,        Ingress
                           releases, release)
    app                    the entry's own keys (import_path, runtime_env, route_prefix, ...), and options of
                           deployments no component owns

A scoped release is the running config with its scope's section taken from the submitted config
(``splice``); the submitted config must agree with the running one everywhere else (``check_scope``). The
running config itself is the history folded: the last good whole-app release, with each later good scoped
release's section spliced in, in order (``compose``).
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import ValidationError

from serve_app.config.loader import deployment_names
from serve_app.config.names import AGENT, EMBEDDER, INGRESS, VECTOR_STORE
from serve_app.config.settings import AppSettings
from serve_app.errors import Conflict, InvalidRequest, NotFound

APP = "app"
MODEL = "model:"
COMPONENT = "component:"
COMPONENTS = ("retrieval", "agent", "ingress")
_MODEL_KEYS = ("model", "engine", "lora", "routing")
_OWNED = {"retrieval": (("vector",), (EMBEDDER, VECTOR_STORE)), "agent": (("agent",), (AGENT,))}


def scope_of(model: str | None = None, component: str | None = None) -> str:
    """The scope a release names (``model`` or ``component``; neither: the whole application)."""
    if model is not None and component is not None:
        raise InvalidRequest("a release is scoped to a model or to a component, not both", "component")
    if component is not None:
        if component not in COMPONENTS:
            raise InvalidRequest(f"unknown component {component!r} (components: {', '.join(COMPONENTS)})",
                                 "component")
        return COMPONENT + component
    return MODEL + model if model is not None else APP


def model_of(scope: str) -> str | None:
    return scope[len(MODEL):] if scope.startswith(MODEL) else None


def describe(scope: str) -> str:
    """A scope in words: "model 'x'", "component retrieval", "the whole application"."""
    if scope.startswith(MODEL):
        return f"model {model_of(scope)!r}"
    return f"component {scope[len(COMPONENT):]}" if scope.startswith(COMPONENT) else "the whole application"


def sections(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Scope -> its section of the plain application ``entry`` (the models first, in the order served)."""
    args = copy.deepcopy(entry.get("args") or {})
    settings = AppSettings.model_validate(args)
    deps = {d["name"]: copy.deepcopy(d) for d in entry.get("deployments") or []}
    out: dict[str, dict[str, Any]] = {}
    raws = ([{k: args.pop(k) for k in _MODEL_KEYS if k in args}] if settings.model.enabled else []) + list(
        args.pop("models", None) or [])
    for i, (raw, (dep, served)) in enumerate(zip(raws, settings.served_models().items(), strict=True)):
        out[MODEL + served.model.name] = {"args": raw, "deployments": [deps.pop(dep)] if dep in deps else [],
                                          "first": i == 0}
    for component, (keys, names) in _OWNED.items():
        out[COMPONENT + component] = {"args": {k: args.pop(k) for k in keys if k in args},
                                      "deployments": [deps.pop(n) for n in names if n in deps]}
    out[COMPONENT + "ingress"] = {"args": args, "deployments": [deps.pop(INGRESS)] if INGRESS in deps else [],
                                  "models_key": "models" in (entry.get("args") or {})}
    out[APP] = {"entry": {k: copy.deepcopy(v) for k, v in entry.items() if k not in ("args", "deployments")},
                "deployments": list(deps.values()), "deployments_key": "deployments" in entry,
                # The deployments' order as written, kept by ``join`` (a config put back together compares equal).
                "order": [d["name"] for d in entry.get("deployments") or []]}
    return out


def join(secs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The plain application entry of its sections (``sections``' inverse)."""
    models = [s for scope, s in secs.items() if scope.startswith(MODEL)]
    first = next((s for s in models if s.get("first")), models[0] if models else None)
    rest = [s for s in models if s is not first]
    ingress = secs[COMPONENT + "ingress"]
    args = copy.deepcopy(ingress["args"])
    if first is not None:
        args.update(copy.deepcopy(first["args"]))
    if rest or ingress.get("models_key"):
        args["models"] = [copy.deepcopy(s["args"]) for s in rest]
    for component in ("retrieval", "agent"):
        args.update(copy.deepcopy(secs[COMPONENT + component]["args"]))
    deps: list[dict[str, Any]] = []
    for section in [*models, *(secs[COMPONENT + c] for c in COMPONENTS)]:
        deps += copy.deepcopy(section["deployments"])
    deps += copy.deepcopy(secs[APP]["deployments"])
    order = {name: i for i, name in enumerate(secs[APP].get("order") or [])}
    deps.sort(key=lambda d: order.get(d["name"], len(order)))
    entry = {**copy.deepcopy(secs[APP]["entry"]), "args": args}
    if deps or secs[APP].get("deployments_key"):
        entry["deployments"] = deps
    return entry


def splice(base: dict[str, Any], scope: str, new: dict[str, Any]) -> dict[str, Any]:
    """``base`` (a plain application entry) with ``scope``'s section taken from ``new``: added when ``base``
    has none, removed when ``new`` has none (a model removed)."""
    if scope == APP:
        return copy.deepcopy(new)
    secs, theirs = sections(base), sections(new)
    if scope in theirs:
        first = secs.get(scope, {}).get("first", False)
        secs[scope] = {**theirs[scope], "first": first}
    else:
        secs.pop(scope, None)
    return join(secs)


def without(entry: dict[str, Any], scope: str) -> dict[str, Any]:
    """The plain application ``entry`` without ``scope``'s section (a model removed)."""
    secs = sections(entry)
    secs.pop(scope, None)
    return join(secs)


def _difference(a: Any, b: Any, path: str) -> str | None:
    """The first path at which two JSON values differ (None: equal); a missing mapping is an empty one."""
    if isinstance(a, dict) or isinstance(b, dict):
        a, b = ({} if a is None else a), ({} if b is None else b)
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            found = _difference(a.get(key), b.get(key), f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if a == b else path


def _where(scope: str, section: dict[str, Any], other: dict[str, Any]) -> str:
    """The config field at which a section differs from another, as a config path."""
    if scope == APP:
        return _difference(section["entry"], other["entry"], "applications[]") or "deployments"
    found = _difference(section["args"], other["args"], "args")
    if scope.startswith(MODEL) and found and not section.get("first"):
        found = found.replace("args", f"args.models[{model_of(scope)!r}]", 1)
    return found or "deployments"


def _strip(section: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k not in ("first", "models_key", "deployments_key", "order")}


def check_scope(scope: str, submitted: dict[str, Any], running: list[dict[str, Any]]) -> None:
    """Refuse a release scoped to ``scope`` whose application entry ``submitted`` changes anything outside its
    scope: every other section must equal that of one of the ``running`` entries (the last good config, and the
    config being applied while other scopes' releases are in flight)."""
    if scope == APP:
        return
    try:
        theirs = sections(submitted)
    except (ValidationError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidRequest(f"invalid config: {str(exc)[:500]}", "config") from None
    ours = [sections(r) for r in running]
    model = model_of(scope)
    if model is not None and scope not in theirs:
        if all(scope not in s for s in ours):
            raise NotFound(f"the model {model!r} is not served and the config does not add it", "model")
        raise InvalidRequest(f"the release is scoped to the model {model!r}, which the config does not serve (to "
                             "remove a model: DELETE /admin/models/{name}, or serve-app remove-model)", "model")
    placed = [s[scope].get("first") for s in ours if scope in s]
    if model is not None and placed and theirs[scope].get("first") != placed[0]:
        # The first model is the default of RAG, the agent and requests naming none: which one it is, is the
        # whole application's to change.
        raise InvalidRequest(f"the release moves the model {model!r} {'from' if placed[0] else 'to'} the first "
                             "place (args.model), which makes it the default model: deploy that as a whole-app "
                             "release", "model")
    for name in dict.fromkeys([*theirs, *(k for s in ours for k in s)]):
        if name == scope:
            continue
        mine = theirs.get(name)
        if any(mine is not None and name in s and _strip(s[name]) == _strip(mine) for s in ours):
            continue
        if mine is None or all(name not in s for s in ours):
            what = "adds" if mine is not None else "removes"
            raise InvalidRequest(f"a release scoped to {describe(scope)} {what} {describe(name)}: deploy that as a "
                                 f"release of its own", "model" if name.startswith(MODEL) else "config")
        field = _where(name, mine, ours[0].get(name) or ours[-1][name])
        raise InvalidRequest(f"a release scoped to {describe(scope)} may change only its own settings, but the "
                             f"config also changes {describe(name)} (at {field}); fetch the running config "
                             "(GET /admin/config) and change only that scope", field)


def check_removal(settings: AppSettings, model: str) -> None:
    """Refuse removing ``model`` at run time when something still depends on it: RAG or the agent naming it,
    or using it as the first model by default (the next one would take its place unasked)."""
    names = settings.model_names()
    if model not in names:
        raise NotFound(f"the model {model!r} is not served (served: {', '.join(names)})", "model")
    if names == [model]:
        raise Conflict(f"{model!r} is the only model served: deploy a whole-app release with model.enabled: false "
                       "to serve none", "model")
    users = (("rag.model", settings.rag.model, settings.rag.enabled, "ingress"),
             ("agent.model", settings.agent.model, settings.agent.enabled, "agent"))
    for field, value, enabled, component in users:
        if value == model:
            raise InvalidRequest(f"{field} names the model {model!r}: release another model for it first", field)
        if value is None and enabled and names[0] == model:
            raise InvalidRequest(f"{field} is unset, so it uses the first model, {model!r}: name the model it "
                                 f"uses (a release of the component {component}) before removing this one", field)


def section_owner(settings: AppSettings, deployment: str) -> str:
    """The scope that owns ``deployment``'s options (a scale or an adapter of it is a release of that scope)."""
    for dep, served in settings.served_models().items():
        if dep == deployment:
            return MODEL + served.model.name
    for component, (_, names) in _OWNED.items():
        if deployment in names:
            return COMPONENT + component
    return COMPONENT + "ingress" if deployment == INGRESS else APP


def scope_deployment_names(settings: AppSettings, scope: str) -> set[str] | None:
    """The deployments of ``scope`` under ``settings`` (None: the whole application's)."""
    if scope == APP:
        return None
    model = model_of(scope)
    if model is not None:
        return {d for d, m in settings.served_models().items() if m.model.name == model}
    component = scope[len(COMPONENT):]
    # A component turned off by the release has no deployment left to probe.
    return (set(_OWNED[component][1]) if component in _OWNED else {INGRESS}) & deployment_names(settings)


def model_deployment(settings: AppSettings, model: str) -> str:
    """The LLM deployment serving ``model``."""
    for dep, served in settings.served_models().items():
        if served.model.name == model:
            return dep
    raise NotFound(f"the model {model!r} is not served (served: {', '.join(settings.model_names())})", "model")


def compose(rows: list[dict[str, Any]], app_entry_of, with_entry) -> dict[str, Any] | None:
    """The running config from good history rows in release order, each ``{"scope", "config"}`` with its
    config already migrated: the last whole-app row's config, each later scoped row's section spliced in.
    ``app_entry_of(config)`` finds the application's entry, ``with_entry(config, entry)`` replaces it."""
    start = max((i for i, r in enumerate(rows) if (r.get("scope") or APP) == APP), default=0)
    if not rows:
        return None
    config = copy.deepcopy(rows[start]["config"])
    for r in rows[start + 1:]:
        config = with_entry(config, splice(app_entry_of(config), r["scope"], app_entry_of(r["config"])))
    return config


def previous_section(rows: list[dict[str, Any]], scope: str, app_entry_of,
                     with_entry) -> tuple[int, dict[str, Any]] | None:
    """The section ``scope`` had before its last change, and the release that gave it, from every good release
    in order (as for ``compose``); None when it never had another (or had none: a model added since)."""
    seen: list[tuple[int, Any]] = []
    config: dict[str, Any] | None = None
    for r in rows:
        scoped = r.get("scope") or APP
        config = copy.deepcopy(r["config"]) if config is None or scoped == APP else \
            with_entry(config, splice(app_entry_of(config), scoped, app_entry_of(r["config"])))
        section = sections(app_entry_of(config)).get(scope)
        if not seen or seen[-1][1] != section:
            seen.append((r["n"], section))
    if len(seen) < 2 or seen[-2][1] is None:
        return None
    return seen[-2]
