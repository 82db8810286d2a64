"""API keys: `serve-app hash-key` makes a key and its entry for the key file ($SERVE_APP_API_KEYS_FILE); the
app keeps only the key's SHA-256 (serve_app/ingress/limits.py)."""

from __future__ import annotations

import argparse

from serve_app.cli import say


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


def register(sub) -> None:
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
