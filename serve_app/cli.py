"""``serve-app`` command line: run the app from a Serve config file, prepare the default model."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from serve_app.config.loader import ConfigError, load_serve_config

log = logging.getLogger("serve_app")


def _say(msg: str) -> None:
    print(f"[serve-app] {msg}", file=sys.stderr, flush=True)


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
            _say(f"applications: {summary}")
            last = summary
        if all(s and s.status == ApplicationStatus.RUNNING for s in states.values()):
            return True
        failed = [n for n, s in states.items() if s and s.status == ApplicationStatus.DEPLOY_FAILED]
        if failed:
            for n in failed:
                _say(f"{n} failed to deploy: {states[n].message}")
            return False
        stop.wait(1.0)
    return False


# Ray Serve's own performance presets, applied to the local Ray instance `serve-app run` starts (they are
# read by every Ray process at start, so they must be in the environment before ray.init). Measured in
# benchmarks/results/chat-serve-modes.json: per-token overhead against bare vLLM drops from 3-16 ms to ~3.5 ms
# and throughput at 32 clients from 0.85 to 0.98 of bare vLLM's.
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
#    controller was the busiest process after the engine, replicas idle or not (5.4-7 % of a core); every
#    0.5 s it uses 2.2-2.6 %, the rest is left to the engine. What it paces (health checks every 10 s,
#    autoscaling delays of seconds, replica starts of tens of seconds) hardly notices the extra 0.4 s
#    (benchmarks/results/cpu-variants.json: four rounds alternated with the default, chat at 8 clients).
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
    plan = engine_cpu_plan()
    if plan is None:
        return
    engine, others = plan
    os.environ[BIND_ENV] = ",".join(map(str, engine))
    pin_process(others)
    _say(f"engine worker on CPU {','.join(map(str, engine))}; Ray and the app's other processes on CPU "
         f"{','.join(map(str, others))}")


def cmd_run(ns: argparse.Namespace) -> int:
    if not (ns.address or os.environ.get("RAY_ADDRESS")):
        for key, value in SERVE_PERFORMANCE_ENV.items():
            os.environ.setdefault(key, value)
    try:
        schema, settings = load_serve_config(ns.config)
    except ConfigError as exc:
        _say(str(exc))
        return 2
    if ns.port is not None:
        schema.http_options.port = ns.port
    if ns.logs_dir is not None:
        from ray.serve.schema import LoggingConfig

        schema.logging_config = (schema.logging_config or LoggingConfig()).model_copy(update={"logs_dir": ns.logs_dir})
    # Convert the default model here, in the foreground, so its progress is visible; replicas reuse it.
    from serve_app.llm.model import ModelPreparationError, resolve_model

    try:
        for s in settings.values():
            resolve_model(s.model.source, s.model.cache_dir)
    except ModelPreparationError as exc:
        _say(str(exc))
        return 2

    import ray
    from ray.serve._private import api as serve_api

    stop = threading.Event()

    def _on_signal(signum, _frame):
        _say(f"signal {signal.Signals(signum).name}: shutting down")
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
        # Split per deployment (config/parts.py): a later release restarts only what it changes.
        from serve_app.config.parts import split_schema

        client.deploy_apps(split_schema(schema), _blocking=False)
        names = [a.name for a in schema.applications]
        if not _wait_running(names, ns.start_timeout, stop):
            if stop.is_set():
                return 0  # asked to stop while starting: a clean shutdown
            _say("the application did not become healthy")
            return 1
        host, port = schema.http_options.host, schema.http_options.port
        _say(f"ready: http://{host}:{port} (Ctrl-C to stop)")
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
            _say("stopped")


def cmd_prepare_model(ns: argparse.Namespace) -> int:
    from serve_app.llm.model import prepare_default_model

    print(prepare_default_model(ns.cache_dir))
    return 0


def cmd_check_config(ns: argparse.Namespace) -> int:
    try:
        _, settings = load_serve_config(ns.config)
    except ConfigError as exc:
        _say(str(exc))
        return 2
    for name, s in settings.items():
        _say(f"{name}: ok (model {s.model.name}, release {s.release})")
    return 0


def _admin_client(ns: argparse.Namespace):
    import httpx

    key = os.environ.get("SERVE_APP_ADMIN_KEY")
    if not key and os.environ.get("SERVE_APP_ADMIN_KEY_FILE"):
        with open(os.environ["SERVE_APP_ADMIN_KEY_FILE"]) as fh:
            key = fh.read().strip()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=ns.url, headers=headers, timeout=60)


def _admin_call(ns: argparse.Namespace, method: str, path: str, **kw) -> tuple[int, object]:
    import httpx

    try:
        with _admin_client(ns) as c:
            r = c.request(method, path, **kw)
    except httpx.HTTPError as exc:
        _say(f"cannot reach {ns.url}: {exc}")
        return 2, None
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
    if r.status_code >= 400:
        msg = body.get("error", {}).get("message") if isinstance(body, dict) else body
        _say(f"{r.status_code}: {msg}")
        return 1, body
    return 0, body


def _print(obj) -> None:
    import json

    print(json.dumps(obj, indent=2))


def _follow(ns: argparse.Namespace, n: int) -> int:
    """Wait for a release's outcome (and its automatic rollback's), print it; 0 only when it is good."""
    while True:
        rc, rel = _admin_call(ns, "GET", f"/admin/releases/{n}")
        if rc:
            return rc
        if rel["status"] != "deploying":
            break
        time.sleep(2)
    rel.pop("config", None)
    _print(rel)
    if rel.get("rolled_back_to"):
        _say(f"release {n} failed; rolling back as release {rel['rolled_back_to']}")
        _follow(ns, rel["rolled_back_to"])
    return 0 if rel["status"] == "good" else 1


def cmd_deploy(ns: argparse.Namespace) -> int:
    import yaml

    try:
        config = yaml.safe_load(open(ns.file).read())
    except (OSError, yaml.YAMLError) as exc:
        _say(f"cannot read {ns.file}: {exc}")
        return 2
    body = {"config": config, "note": ns.note}
    if ns.canary:
        body["canary"] = {k: v for k, v in (("share", ns.share), ("window_s", ns.window)) if v is not None}
    rc, out = _admin_call(ns, "POST", "/admin/releases", json=body)
    if rc:
        return rc
    _say(f"release {out['release']} deploying; changed: {', '.join(out['changed']) or 'nothing'}")
    if out.get("canary"):
        c = out["canary"]
        _say(f"canary first: {c['share']:.0%} of LLM requests for {c['window_s']:g}s, then promoted or rolled back")
    return _follow(ns, out["release"]) if not ns.no_wait else 0


def cmd_status(ns: argparse.Namespace) -> int:
    rc, out = _admin_call(ns, "GET", "/admin/status")
    if not rc:
        _print(out)
    return rc


def cmd_history(ns: argparse.Namespace) -> int:
    rc, out = _admin_call(ns, "GET", "/admin/releases")
    if not rc:
        for r in out["data"]:
            print(f"{r['n']:>4}  {r['status']:<10} {r['kind']:<9} {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r['created_at']))}"
                  f"  {r['actor']:<16} {', '.join(r['changed'])[:60]:<60} {r.get('outcome') or ''}")
    return rc


def cmd_rollback(ns: argparse.Namespace) -> int:
    rc, out = _admin_call(ns, "POST", "/admin/rollback", json={"release": ns.release})
    if rc:
        return rc
    _say(f"rollback deploying as release {out['release']}")
    return _follow(ns, out["release"])


def cmd_scale(ns: argparse.Namespace) -> int:
    body = {"deployment": ns.name, "replicas": ns.replicas, "factor": ns.factor}
    rc, out = _admin_call(ns, "POST", "/admin/scale", json=body)
    if rc:
        return rc
    _say(f"scaling as release {out['release']}")
    return _follow(ns, out["release"])


def cmd_hash_key(ns: argparse.Namespace) -> int:
    """A new API key: the key itself once (stderr), and the entry for the key file (stdout, YAML)."""
    import secrets

    import yaml

    from serve_app.ingress.limits import KeyEntry, digest

    key = ns.key or f"sk-{secrets.token_urlsafe(32)}"
    try:
        entry = KeyEntry(name=ns.name, sha256=digest(key), scopes=ns.scopes.split(","),
                         requests_per_minute=ns.rpm, tokens_per_minute=ns.tpm)
    except ValueError as exc:
        _say(f"invalid key entry: {exc}")
        return 2
    if not ns.key:
        _say(f"API key for {ns.name} (shown once, store it now): {key}")
    print(yaml.safe_dump([entry.model_dump(exclude_none=True)], sort_keys=False), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="serve-app", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="start Ray (or join one) and run the app from a Serve config file")
    run.add_argument("--config", default="configs/dev-cpu.yaml", help="Serve config file")
    run.add_argument("--address", help="Ray cluster to join (default: start a local one, or $RAY_ADDRESS)")
    run.add_argument("--port", type=int, help="override http_options.port")
    run.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance")
    run.add_argument("--dashboard", action="store_true", help="start Ray's dashboard with the local Ray")
    run.add_argument("--isolate-engine-cpus", action="store_true",
                     default=os.environ.get("SERVE_APP_ISOLATE_ENGINE_CPUS", "0") not in ("", "0"),
                     help="CPU build: start the local Ray instance on the cores vLLM leaves free, off the engine "
                     "worker's (more throughput, slower replica starts on small machines; also "
                     "$SERVE_APP_ISOLATE_ENGINE_CPUS=1)")
    run.add_argument("--logs-dir", default=None, help="folder of the Serve components' log files (JSON lines with "
                     "the config's logging_config; default: Ray's session folder, logs/serve)")
    run.add_argument("--metrics-port", type=int, default=None, help="port of the local Ray's metrics endpoint "
                     "(Prometheus format: the app's, Serve's and vLLM's metrics; default: a free port; "
                     "GET /metrics on the app relays it either way)")
    run.add_argument("--start-timeout", type=float, default=600.0, help="seconds to wait for RUNNING")
    run.set_defaults(func=cmd_run)

    prep = sub.add_parser("prepare-model", help="convert the shipped default model (once) and print its path")
    prep.add_argument("--cache-dir", default=None)
    prep.set_defaults(func=cmd_prepare_model)

    check = sub.add_parser("check-config", help="validate a Serve config file and the app settings in it")
    check.add_argument("config")
    check.set_defaults(func=cmd_check_config)

    hk = sub.add_parser("hash-key", help="make an API key and its entry for the key file ($SERVE_APP_API_KEYS_FILE)")
    hk.add_argument("--name", required=True, help="who the key belongs to")
    hk.add_argument("--scopes", default="public", help="comma-separated: public, admin")
    hk.add_argument("--rpm", type=float, default=None, help="requests per minute (default: unlimited)")
    hk.add_argument("--tpm", type=float, default=None, help="tokens per minute (default: unlimited)")
    hk.add_argument("--key", default=None, help="hash this key instead of making one")
    hk.set_defaults(func=cmd_hash_key)

    kr = sub.add_parser("kuberay", help="write a KubeRay RayService manifest whose serveConfigV2 is a Serve config file")
    kr.add_argument("config", help="Serve config file (validated first)")
    kr.add_argument("--image", required=True, help="container image with serve_app installed (the gpu extra)")
    kr.add_argument("--name", default="serve-app")
    kr.add_argument("--workers", type=int, nargs=3, default=[1, 1, 8], metavar=("N", "MIN", "MAX"),
                    help="GPU worker group: replicas, minimum, maximum")
    kr.add_argument("--gpus-per-worker", type=int, default=1)
    kr.add_argument("--output", "-o", default="-", help="file to write (default: stdout)")
    kr.set_defaults(func=cmd_kuberay)

    def admin(name: str, help: str):
        p = sub.add_parser(name, help=help + " (admin API; key from $SERVE_APP_ADMIN_KEY)")
        p.add_argument("--url", default=os.environ.get("SERVE_APP_URL", "http://127.0.0.1:8000"), help="the app's URL")
        return p

    dep = admin("deploy", "deploy a release (a Serve config file) with automatic rollback")
    dep.add_argument("file")
    dep.add_argument("--note", default=None)
    dep.add_argument("--no-wait", action="store_true", help="return once the release is accepted")
    dep.add_argument("--canary", action="store_true", help="send a share of LLM traffic to the new release's LLM "
                     "first; promote or roll back from its error rate and p99 TTFT (args.releases.canary)")
    dep.add_argument("--share", type=float, help="with --canary: share of LLM requests (overrides the release's)")
    dep.add_argument("--window", type=float, help="with --canary: seconds of comparison (overrides the release's)")
    dep.set_defaults(func=cmd_deploy)
    admin("status", "Serve status per deployment, current and last good release").set_defaults(func=cmd_status)
    admin("history", "the release history").set_defaults(func=cmd_history)
    rb = admin("rollback", "redeploy the previous good release, or release N")
    rb.add_argument("release", nargs="?", type=int)
    rb.set_defaults(func=cmd_rollback)
    sc = admin("scale", "change a deployment's replicas or scale its autoscaling bounds (recorded as a release)")
    sc.add_argument("name")
    group = sc.add_mutually_exclusive_group(required=True)
    group.add_argument("--replicas", type=int)
    group.add_argument("--factor", type=float)
    sc.set_defaults(func=cmd_scale)

    sub.add_parser("bench", add_help=False, help="run the benchmark suite of a source checkout (benchmarks/; "
                   "`serve-app bench --help` lists its scenarios)")

    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["bench"]:
        return cmd_bench(args[1:])
    ns = parser.parse_args(args)
    return ns.func(ns)


def cmd_kuberay(ns) -> int:
    import ray

    from serve_app.config.kuberay import dump, rayservice

    try:
        manifest = rayservice(ns.config, name=ns.name, image=ns.image, ray_version=ray.__version__,
                              workers=tuple(ns.workers), gpus_per_worker=ns.gpus_per_worker)
    except ConfigError as exc:
        _say(str(exc))
        return 2
    text = dump(manifest)
    if ns.output == "-":
        sys.stdout.write(text)
    else:
        Path(ns.output).write_text(text)
        _say(f"wrote {ns.output}")
    return 0


def cmd_bench(args: list[str]) -> int:
    # The suite lives beside the package in a source checkout (it starts bare vLLM and the app itself).
    root = Path.cwd()
    if not (root / "benchmarks" / "suite.py").exists():
        _say("serve-app bench runs from the root of a serve_app source checkout (benchmarks/suite.py not found here)")
        return 2
    sys.path.insert(0, str(root))
    from benchmarks.suite import main as bench_main

    return bench_main(args)


if __name__ == "__main__":
    sys.exit(main())
