"""The runner: `serve-app run` (start Ray or join a cluster, deploy a Serve config file, wait, shut down on
SIGINT/SIGTERM), `prepare-model`, `check-config`, `migrate` (the state store's schema), `expand` (the file as
Serve's multi-application config) and `kuberay` (that as a KubeRay RayService manifest)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from serve_app.cli import say


def _wait_running(app_names: list[str], timeout_s: float, stop: threading.Event) -> bool:
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline and not stop.is_set():
        status = serve.status()
        states = {n: status.applications.get(n) for n in app_names}
        summary = {n: (s.status if s else "NOT_STARTED") for n, s in states.items()}
        if summary != last:
            say(f"applications: {summary}")
            last = summary
        if all(s and s.status == ApplicationStatus.RUNNING for s in states.values()):
            return True
        failed = [n for n, s in states.items() if s and s.status == ApplicationStatus.DEPLOY_FAILED]
        if failed:
            for n in failed:
                say(f"{n} failed to deploy: {states[n].message}")
            return False
        stop.wait(1.0)
    return False


# Ray Serve's own performance presets, applied to the local Ray instance `serve-app run` starts (they are
# read by every Ray process at start, so they must be in the environment before ray.init). Each was measured
# against Serve's default beside bare vLLM (benchmarks/results/chat-serve-modes.json, cpu-variants.json;
# benchmarks/README.md has the figures).
#  - RAY_SERVE_THROUGHPUT_OPTIMIZED: user code on the replica's event loop, gRPC between deployments,
#    buffered access logs (to the log files, not the terminal), GC frozen after start-up.
#  - RAY_SERVE_ENABLE_HA_PROXY: HAProxy forwards HTTP straight to the ingress replicas' own HTTP servers,
#    instead of through Serve's Python proxy actor: one Python hop less per streamed token.
# Set either to 0 in the environment to opt out. On an existing cluster (--address) they are the cluster's
# business: set them where its nodes are started.
#  - RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S: how long a replaced ingress replica keeps accepting
#    while HAProxy takes it out of rotation (Serve's default, 30 s, suits many proxies on many nodes). An
#    application counts as RUNNING only once the old replica has drained, so this is on the critical path
#    of every release and rollback; HAProxy on the same machine needs a few seconds (releases under load:
#    zero failed requests, benchmarks/results/releases.json).
#  - RAY_SERVE_CONTROL_LOOP_INTERVAL_S: how often Serve's controller reconciles (default 0.1 s). Serve's
#    controller was the busiest process after the engine, replicas idle or not; at 0.5 s it takes less than
#    half of that CPU, left to the engine. What it paces (health checks every 10 s, autoscaling delays of
#    seconds, replica starts of tens of seconds) hardly notices the extra 0.4 s.
SERVE_PERFORMANCE_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
}


def _isolate_engine_cpus(settings: dict) -> None:
    """On a CPU build, start the local Ray instance off the engine worker's cores (serve_app/llm/cpus.py)."""
    from serve_app.llm.cpus import BIND_ENV, engine_cpu_plan, pin_process

    if not hasattr(os, "sched_setaffinity"):
        return  # no CPU masks on this platform
    if os.environ.get(BIND_ENV, "auto") != "auto":
        return  # the operator bound the engine's threads explicitly
    if not any(s.model.enabled for s in settings.values()):
        return  # no engine
    if any(s.engine.tensor_parallel_size > 1 for s in settings.values()):
        return  # one worker per NUMA node: vLLM's own binding, nothing to reserve here
    if sum(len(s.served_models()) for s in settings.values()) > 1:
        # The split reserves cores for one engine; several engines claim cores each (engine.cpu_cores).
        say("several models: no engine CPU split (each engine claims cores of its own with engine.cpu_cores)")
        return
    plan = engine_cpu_plan()
    if plan is None:
        return
    engine, others = plan
    os.environ[BIND_ENV] = ",".join(map(str, engine))
    pin_process(others)
    say(f"engine worker on CPU {','.join(map(str, engine))}; Ray and the app's other processes on CPU "
         f"{','.join(map(str, others))}")


def cmd_run(ns: argparse.Namespace) -> int:
    from serve_app.config.loader import ConfigError, load_serve_config

    if not (ns.address or os.environ.get("RAY_ADDRESS")):
        for key, value in SERVE_PERFORMANCE_ENV.items():
            os.environ.setdefault(key, value)
    try:
        schema, settings = load_serve_config(ns.config)
    except ConfigError as exc:
        say(str(exc))
        return 2
    if ns.port is not None:
        schema.http_options.port = ns.port
    # The state store first (serve_app/state/store.py): migrated here, before any replica reads it; one that
    # cannot be reached stops the run with its URL (password hidden) rather than a replica's traceback.
    if cmd_migrate(ns) != 0:
        return 2
    if ns.logs_dir is not None:
        from ray.serve.schema import LoggingConfig

        schema.logging_config = (schema.logging_config or LoggingConfig()).model_copy(update={"logs_dir": ns.logs_dir})
    # Convert the default (and tiny) model here, in the foreground, so its progress is visible; replicas reuse it.
    from serve_app.llm.model import ModelPreparationError, resolve_model

    try:
        for s in settings.values():
            for served in s.served_models().values():
                resolve_model(served.model.source, served.model.cache_dir)
    except ModelPreparationError as exc:
        say(str(exc))
        return 2

    import ray
    from ray.serve._private import api as serve_api

    stop = threading.Event()

    def _on_signal(signum, _frame):
        say(f"signal {signal.Signals(signum).name}: shutting down")
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    address = ns.address or os.environ.get("RAY_ADDRESS")
    if not address and ns.isolate_engine_cpus:
        _isolate_engine_cpus(settings)
    names: list[str] = []
    try:
        if address:
            ray.init(address=address, namespace="serve")
        else:
            # address="local": always a new local instance, never a `ray start` cluster that happens to run.
            ray.init(address="local", num_cpus=ns.num_cpus, include_dashboard=ns.dashboard, namespace="serve",
                     _metrics_export_port=ns.metrics_port)
        # Ray's core worker installs its own SIGTERM handler (it logs and aborts the driver, skipping
        # Serve's shutdown): put ours back so SIGTERM shuts down as cleanly as Ctrl-C.
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)
        # The same two calls `serve run CONFIG` makes: start Serve with the file's HTTP options, then
        # submit the whole config. Later in-place updates go through the same deploy_apps.
        client = serve_api.serve_start(
            http_options=schema.http_options.model_dump(),
            proxy_location=schema.proxy_location,
            controller_options=schema.controller_options,
            global_tracing_config=schema.tracing_config,
        )
        # One Serve application per component (config/apps.py): a later release rebuilds only those it changes.
        from serve_app.config.apps import expand_schema

        expanded = expand_schema(schema)
        client.deploy_apps(expanded, _blocking=False)
        names = [a.name for a in expanded.applications]
        if not _wait_running(names, ns.start_timeout, stop):
            if stop.is_set():
                return 0  # asked to stop while starting: a clean shutdown
            say("the application did not become healthy")
            return 1
        # The config the app runs is its release history's first release (or the next one, if the history
        # holds an earlier run's): recorded once Serve runs it, so the release controller never has to guess.
        _record_start(schema)
        host, port = schema.http_options.host, schema.http_options.port
        say(f"ready: http://{host}:{port} (Ctrl-C to stop)")
        while not stop.wait(1.0):
            pass
        return 0
    finally:
        from ray import serve

        try:
            if not address:
                serve.shutdown()
            elif names:
                # On a shared cluster, like `serve run`: remove what this command deployed, leave Serve up.
                for name in names:
                    serve.delete(name)
        finally:
            ray.shutdown()
            say("stopped")


def _record_start(schema) -> None:
    """Record the plain config as a good release with the cluster's release controller (created here if it
    does not run yet: serve_app/release/controller.py)."""
    import ray

    from serve_app.config.apps import DEFAULT_APP_NAME
    from serve_app.config.loader import APP_IMPORT_PATH
    from serve_app.release.actor import get_controller

    plain = schema.model_dump(mode="json", exclude_unset=True)
    entry = next(a for a in plain["applications"] if a.get("import_path") == APP_IMPORT_PATH)
    app = entry.get("name") or DEFAULT_APP_NAME
    # The controller reads where its history lives from the environment the app's replicas get too.
    env = (entry.get("runtime_env") or {}).get("env_vars") or {}
    try:
        n = ray.get(get_controller(app, env_vars=env).started_from.remote(plain))
    except Exception as exc:  # noqa: BLE001 - the app runs without it; releases then start from the first submitted
        # One release controller per cluster: on a shared cluster it may keep another application's history.
        say(f"the release history did not record this config ({type(exc).__name__}: {str(exc)[:300]}); "
            "the first release submitted to the admin API starts it")
        return
    say(f"release {n}: the config this run started from")


def _write(text: str, output: str) -> int:
    """A command's YAML to stdout ("-") or a file."""
    if output == "-":
        sys.stdout.write(text)
    else:
        Path(output).write_text(text)
        say(f"wrote {output}")
    return 0


def cmd_expand(ns: argparse.Namespace) -> int:
    import yaml

    from serve_app.config.apps import expand
    from serve_app.config.loader import ConfigError, load_serve_config

    try:
        schema, _ = load_serve_config(ns.config)
        text = yaml.safe_dump(expand(schema.model_dump(mode="json", exclude_unset=True)), sort_keys=False)
    except ConfigError as exc:
        say(str(exc))
        return 2
    return _write(text, ns.output)


def cmd_prepare_model(ns: argparse.Namespace) -> int:
    from serve_app.llm.model import prepare_default_model

    print(prepare_default_model(ns.cache_dir))
    return 0


def cmd_check_config(ns: argparse.Namespace) -> int:
    from serve_app.config.loader import ConfigError, load_serve_config

    try:
        _, settings = load_serve_config(ns.config)
    except ConfigError as exc:
        say(str(exc))
        return 2
    for name, s in settings.items():
        say(f"{name}: ok (model {s.model.name}, release {s.release})")
    return 0


def cmd_migrate(ns: argparse.Namespace) -> int:
    """Bring the state store's schema to head (what `serve-app run` does first, and the release controller at
    its start); 2 with the reason when the store cannot be used."""
    from serve_app.state import store

    try:
        engine = store.open_store()
        say(f"state store {store.shown(str(engine.url))}: schema at {store.revision(engine)}")
        engine.dispose()
    except store.StoreUnavailable as exc:
        say(str(exc))
        return 2
    return 0


def cmd_kuberay(ns: argparse.Namespace) -> int:
    import ray

    from serve_app.config.kuberay import dump, rayservice
    from serve_app.config.loader import ConfigError

    try:
        manifest = rayservice(ns.config, name=ns.name, image=ns.image, ray_version=ray.__version__,
                              workers=tuple(ns.workers), gpus_per_worker=ns.gpus_per_worker)
    except ConfigError as exc:
        say(str(exc))
        return 2
    return _write(dump(manifest), ns.output)


def register(sub) -> None:
    h = "start Ray (or join one) and run the app from a Serve config file"
    run = sub.add_parser("run", help=h, description=h)
    run.add_argument("--config", default="configs/dev-cpu.yaml", help="Serve config file")
    run.add_argument("--address", help="Ray cluster to join (default: start a local one, or $RAY_ADDRESS)")
    run.add_argument("--port", type=int, help="override http_options.port")
    run.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance")
    run.add_argument("--dashboard", action="store_true", help="start Ray's dashboard with the local Ray")
    run.add_argument("--isolate-engine-cpus", action=argparse.BooleanOptionalAction,
                     default=os.environ.get("SERVE_APP_ISOLATE_ENGINE_CPUS", "1") not in ("", "0"),
                     help="CPU build, one model: start the local Ray instance on the cores vLLM leaves free, off the "
                     "engine worker's, so the app's processes never preempt it (on by default; "
                     "--no-isolate-engine-cpus or $SERVE_APP_ISOLATE_ENGINE_CPUS=0 turns it off: more cores for "
                     "replica starts and rollbacks, less chat throughput)")
    run.add_argument("--logs-dir", default=None, help="folder of the Serve components' log files (JSON lines with "
                     "the config's logging_config; default: Ray's session folder, logs/serve)")
    run.add_argument("--metrics-port", type=int, default=None, help="port of the local Ray's metrics endpoint "
                     "(Prometheus format: the app's, Serve's and vLLM's metrics; default: a free port; "
                     "GET /metrics on the app relays it either way)")
    run.add_argument("--start-timeout", type=float, default=600.0, help="seconds to wait for RUNNING")
    run.set_defaults(func=cmd_run)

    h = "convert the shipped default model (once) and print its path"
    prep = sub.add_parser("prepare-model", help=h, description=h)
    prep.add_argument("--cache-dir", default=None, help="cache folder; the model goes under models/ "
                      "(default: $SERVE_APP_CACHE_DIR, else $XDG_CACHE_HOME/serve_app, else ~/.cache/serve_app)")
    prep.set_defaults(func=cmd_prepare_model)

    h = "validate a Serve config file and the app settings in it"
    check = sub.add_parser("check-config", help=h, description=h)
    check.add_argument("config", help="Serve config file")
    check.set_defaults(func=cmd_check_config)

    h = ("migrate the state store ($SERVE_APP_STATE_URL, else SQLite in the state directory) to this serve_app's "
         "schema; `serve-app run` and the release controller do it at start")
    sub.add_parser("migrate", help=h, description=h).set_defaults(func=cmd_migrate)

    h = ("write the Serve config a config file runs as: one application per component (what `serve deploy` "
         "takes; `serve-app run` and releases expand it themselves)")
    ex = sub.add_parser("expand", help=h, description=h)
    ex.add_argument("config", help="Serve config file (validated first)")
    ex.add_argument("--output", "-o", default="-", help="file to write (default: stdout)")
    ex.set_defaults(func=cmd_expand)

    h = "write a KubeRay RayService manifest whose serveConfigV2 is a Serve config file"
    kr = sub.add_parser("kuberay", help=h, description=h)
    kr.add_argument("config", help="Serve config file (validated first)")
    kr.add_argument("--image", required=True, help="container image with serve_app installed (the gpu extra)")
    kr.add_argument("--name", default="serve-app", help="the RayService's name")
    kr.add_argument("--workers", type=int, nargs=3, default=[1, 1, 8], metavar=("N", "MIN", "MAX"),
                    help="GPU worker group: replicas, minimum, maximum")
    kr.add_argument("--gpus-per-worker", type=int, default=1, help="GPUs of each worker pod")
    kr.add_argument("--output", "-o", default="-", help="file to write (default: stdout)")
    kr.set_defaults(func=cmd_kuberay)
