"""The admin subcommands: `serve-app deploy | status | history | rollback | remove-model | scale | adapters`,
calls of a running app's admin API (serve_app/admin_client.py). Exit status: 0 done (a release: ended good), 1 refused or not good,
2 the app or a file could not be reached."""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from collections.abc import Callable

import httpx

from serve_app.admin_client import AdminClient, AdminError
from serve_app.cli import say

# How long a command follows the release it started. The release itself is bounded by the controller
# (releases.ready_timeout_s, watch_s, a canary's window_s); this only bounds the waiting terminal.
FOLLOW_TIMEOUT_S = 7200.0


def _admin_command(fn: Callable[..., int]) -> Callable[..., int]:
    """``fn(ns, client, *args)`` becomes ``command(ns, *args)``: ``fn`` runs with a client of ``--url``, and
    what goes wrong becomes one line and an exit status."""

    @functools.wraps(fn)
    def command(ns: argparse.Namespace, *args) -> int:
        try:
            with AdminClient(ns.url, timeout=60) as client:
                return fn(ns, client, *args)
        except AdminError as exc:
            say(f"{exc.status}: {exc.message}")
            return 1
        except httpx.HTTPError as exc:
            say(f"cannot reach {ns.url}: {exc}")
            return 2
        except TimeoutError as exc:  # follow(): the release goes on
            say(f"{exc}; `serve-app status` shows how it goes on")
            return 1
        except OSError as exc:  # $SERVE_APP_ADMIN_KEY_FILE
            say(f"cannot read the admin key: {exc}")
            return 2

    return command


def _print(obj) -> None:
    print(json.dumps(obj, indent=2))


def _follow(client: AdminClient, n: int, timeout_s: float) -> int:
    """Wait for a release's outcome (and its automatic rollback's), print it; 0 only when it is good."""
    rel = client.follow(n, timeout_s)
    rel.pop("config", None)
    _print(rel)
    if rel.get("rolled_back_to"):
        say(f"release {n} failed; rolling back as release {rel['rolled_back_to']}")
        _follow(client, rel["rolled_back_to"], timeout_s)
    return 0 if rel["status"] == "good" else 1


def cmd_deploy(ns: argparse.Namespace) -> int:
    import yaml

    try:
        with open(ns.file) as fh:
            config = yaml.safe_load(fh.read())
    except (OSError, yaml.YAMLError) as exc:
        say(f"cannot read {ns.file}: {exc}")
        return 2
    canary = None
    if ns.canary:
        canary = {k: v for k, v in (("share", ns.share), ("window_s", ns.window)) if v is not None}
    return _deploy(ns, config, canary)


@_admin_command
def _deploy(ns: argparse.Namespace, client: AdminClient, config: dict, canary: dict | None) -> int:
    out = client.deploy(config, ns.note, canary, ns.model, ns.component)
    say(f"release {out['release']} ({out.get('scope', 'app')}) deploying; changed: "
        f"{', '.join(out['changed']) or 'nothing'}")
    if out.get("canary"):
        c = out["canary"]
        say(f"canary first: {c['share']:.0%} of the model's requests for {c['window_s']:g}s, then promoted or rolled "
            "back")
    return _follow(client, out["release"], ns.timeout) if not ns.no_wait else 0


@_admin_command
def cmd_status(ns: argparse.Namespace, client: AdminClient) -> int:
    _print(client.status())
    return 0


def _one_line(text: str, limit: int = 200) -> str:
    """A release's outcome on its row: an engine's error may span lines (`GET /admin/releases/{n}` has it whole)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


@_admin_command
def cmd_history(ns: argparse.Namespace, client: AdminClient) -> int:
    for r in client.releases():
        print(f"{r['n']:>4}  {r['status']:<10} {r['kind']:<9} {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r['created_at']))}"
              f"  {r['actor']:<16} {', '.join(r['changed'])[:60]:<60} {_one_line(r.get('outcome') or '')}")
    return 0


@_admin_command
def cmd_rollback(ns: argparse.Namespace, client: AdminClient) -> int:
    out = client.rollback(ns.release, ns.model, ns.component)
    if out.get("aborted_canary"):
        say(f"canary release {out['release']} stopped: {out['status']}")
        return 0
    say(f"rollback deploying as release {out['release']}")
    return _follow(client, out["release"], ns.timeout)


@_admin_command
def cmd_remove_model(ns: argparse.Namespace, client: AdminClient) -> int:
    out = client.remove_model(ns.name)
    say(f"removing {ns.name} as release {out['release']}")
    return _follow(client, out["release"], ns.timeout)


@_admin_command
def cmd_scale(ns: argparse.Namespace, client: AdminClient) -> int:
    out = client.scale(ns.name, ns.replicas, ns.factor)
    say(f"scaling as release {out['release']}")
    return _follow(client, out["release"], ns.timeout)


@_admin_command
def cmd_adapters(ns: argparse.Namespace, client: AdminClient) -> int:
    if ns.action == "list":
        _print(client.adapters())
        return 0
    if not ns.name:
        say(f"{ns.action} needs the adapter's name")
        return 2
    if ns.action == "load":
        if not ns.path:
            say("load needs --path (the adapter's folder under the model's adapter root)")
            return 2
        out = client.load_adapter(ns.name, ns.path, ns.model)
        say(f"adapter {ns.name} passed its trial load; loading as release {out['release']}")
    else:
        out = client.unload_adapter(ns.name)
        say(f"unloading adapter {ns.name} as release {out['release']}")
    return _follow(client, out["release"], ns.timeout)


def register(sub) -> None:
    def admin(name: str, help: str, follows: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=f"{help} (admin API; key from $SERVE_APP_ADMIN_KEY)",
                           description=f"{help}.\n\nAdmin API of the app at --url; the admin key from "
                           "$SERVE_APP_ADMIN_KEY,\nelse the file $SERVE_APP_ADMIN_KEY_FILE names.")
        p.add_argument("--url", default=os.environ.get("SERVE_APP_URL", "http://127.0.0.1:8000"), help="the app's URL")
        if follows:
            p.add_argument("--timeout", type=float, default=FOLLOW_TIMEOUT_S, help="seconds to wait for the "
                           "release's outcome (the release goes on after it, the exit status is then 1)")
        return p

    dep = admin("deploy", "deploy a release (a Serve config file) with automatic rollback", follows=True)
    dep.add_argument("file", help="Serve config file of the release")
    dep.add_argument("--note", default=None, help="why (stored in the history)")
    dep.add_argument("--no-wait", action="store_true", help="return once the release is accepted")
    dep.add_argument("--canary", action="store_true", help="send a share of LLM traffic to the new release's LLM "
                     "first; promote or roll back from its error rate and p99 TTFT (args.releases.canary)")
    dep.add_argument("--share", type=float, help="with --canary: share of LLM requests (overrides the release's)")
    dep.add_argument("--window", type=float, help="with --canary: seconds of comparison (overrides the release's)")
    scope = dep.add_mutually_exclusive_group()
    scope.add_argument("--model", help="scope the release to this served model: only its settings may differ from "
                       "the running config (a model the running config lacks is added)")
    scope.add_argument("--component", choices=["retrieval", "agent", "ingress"],
                       help="scope the release to this component: only its settings may differ")
    dep.set_defaults(func=cmd_deploy)
    admin("status", "Serve status per application, deployment and model; current and last good release").set_defaults(
        func=cmd_status)
    admin("history", "the release history").set_defaults(func=cmd_history)
    rb = admin("rollback", "redeploy the previous good release, or release N", follows=True)
    rb.add_argument("release", nargs="?", type=int, help="release to go back to (default: the previous good one)")
    rb_scope = rb.add_mutually_exclusive_group()
    rb_scope.add_argument("--model", help="roll back only this model's settings (to its previous release)")
    rb_scope.add_argument("--component", choices=["retrieval", "agent", "ingress"],
                          help="roll back only this component's settings")
    rb.set_defaults(func=cmd_rollback)
    rm = admin("remove-model", "stop serving a model: routing stops, its streams finish, its application goes "
               "(recorded as a release)", follows=True)
    rm.add_argument("name", help="the model's served name")
    rm.set_defaults(func=cmd_remove_model)
    sc = admin("scale", "change a deployment's replicas or scale its autoscaling bounds (recorded as a release)",
               follows=True)
    sc.add_argument("name", help="deployment, e.g. LLMServer-<served name> or Ingress (serve-app status lists them)")
    group = sc.add_mutually_exclusive_group(required=True)
    group.add_argument("--replicas", type=int, help="fixed replica count (autoscaling off)")
    group.add_argument("--factor", type=float, help="multiply the replicas or the autoscaling bounds")
    sc.set_defaults(func=cmd_scale)
    ad = admin("adapters", "list, load or unload LoRA adapters at run time (each load and unload is a release; "
               "no engine restarts)", follows=True)
    ad.add_argument("action", choices=["list", "load", "unload"])
    ad.add_argument("name", nargs="?", help="adapter name (load, unload): what requests put in 'model'")
    ad.add_argument("--path", help="load: the adapter's folder, relative to the model's adapter root")
    ad.add_argument("--model", help="load: served name of the base model (default: the first model)")
    ad.set_defaults(func=cmd_adapters)
