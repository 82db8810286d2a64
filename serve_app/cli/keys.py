"""API keys: `serve-app keys list|create|change|revoke` manage them at run time through the admin API (the state
store keeps them, serve_app/state/keys.py); `serve-app hash-key` makes a key and its entry for the key file
($SERVE_APP_API_KEYS_FILE), which seeds the store. The app keeps only a key's SHA-256."""

from __future__ import annotations

import argparse

from serve_app.admin_client import AdminClient
from serve_app.cli import say
from serve_app.cli.admin import _admin_command, _print


def cmd_hash_key(ns: argparse.Namespace) -> int:
    """A new API key: the key itself once (stderr), and the entry for the key file (stdout, YAML)."""
    import secrets

    import yaml

    from serve_app.ingress.limits import KeyEntry, digest

    key = ns.key or f"sk-{secrets.token_urlsafe(32)}"
    try:
        entry = KeyEntry(name=ns.name, sha256=digest(key), scopes=ns.scopes.split(","),
                         requests_per_minute=ns.rpm, tokens_per_minute=ns.tpm,
                         models=ns.models.split(",") if ns.models else None)
    except ValueError as exc:
        say(f"invalid key entry: {exc}")
        return 2
    if not ns.key:
        say(f"API key for {ns.name} (shown once, store it now): {key}")
    print(yaml.safe_dump([entry.model_dump(exclude_none=True)], sort_keys=False), end="")
    return 0


def _limit(value: str) -> float | None | str:
    """A limit on the command line: a positive number, or "none" (``change``: clears it). argparse reports
    anything else."""
    return "none" if value == "none" else float(value)


def _fields(ns: argparse.Namespace) -> dict:
    """The key fields given on the command line ("none" clears a limit or the model list in ``change``)."""
    out: dict = {}
    for name, value in (("tenant", ns.tenant), ("scopes", ns.scopes), ("models", ns.models),
                        ("requests_per_minute", ns.rpm), ("tokens_per_minute", ns.tpm)):
        if value is not None:
            out[name] = None if value == "none" else value.split(",") if name in ("scopes", "models") else value
    return out


@_admin_command
def cmd_keys(ns: argparse.Namespace, client: AdminClient) -> int:
    if ns.action == "list":
        _print(client.keys())
        return 0
    if not ns.name:
        say(f"{ns.action} needs the key's name")
        return 2
    if ns.action == "create":
        out = client.create_key(ns.name, **_fields(ns))
        say(f"API key for {ns.name} (shown once, store it now): {out.pop('key')}")
    elif ns.action == "change":
        out = client.change_key(ns.name, **_fields(ns))
    else:
        out = client.revoke_key(ns.name)
    _print(out)
    return 0


def register(sub) -> None:
    import os

    h = "API keys at run time: list, create, change or revoke (admin API; key from $SERVE_APP_ADMIN_KEY)"
    k = sub.add_parser("keys", help=h, description=h + ". A revoked key is refused by every ingress replica "
                       "within about a second.")
    k.add_argument("action", choices=["list", "create", "change", "revoke"])
    k.add_argument("name", nargs="?", help="the key's name (create, change, revoke)")
    k.add_argument("--url", default=os.environ.get("SERVE_APP_URL", "http://127.0.0.1:8000"), help="the app's URL")
    k.add_argument("--tenant", help="whose models, state and documents the key reaches (default: its name)")
    k.add_argument("--scopes", help="comma-separated: public, admin (default: public)")
    k.add_argument("--models", help="comma-separated served model names the key may use (default: every model; "
                   "change: none clears)")
    k.add_argument("--rpm", type=_limit, help="requests per minute (default: unlimited; change: none clears)")
    k.add_argument("--tpm", type=_limit, help="tokens per minute (default: unlimited; change: none clears)")
    k.set_defaults(func=cmd_keys)

    h = "make an API key and its entry for the key file ($SERVE_APP_API_KEYS_FILE)"
    hk = sub.add_parser("hash-key", help=h, description=h)
    hk.add_argument("--name", required=True, help="who the key belongs to")
    hk.add_argument("--scopes", default="public", help="comma-separated: public, admin")
    hk.add_argument("--rpm", type=float, default=None, help="requests per minute (default: unlimited)")
    hk.add_argument("--tpm", type=float, default=None, help="tokens per minute (default: unlimited)")
    hk.add_argument("--models", default=None, help="comma-separated served model names the key may use "
                    "(default: every model)")
    hk.add_argument("--key", default=None, help="hash this key instead of making one")
    hk.set_defaults(func=cmd_hash_key)
