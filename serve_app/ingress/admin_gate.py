"""Who may call the admin API, decided once per request, and the audit record of every call.

Authorization: ``Authorization: Bearer <key>`` where the key is ``$SERVE_APP_ADMIN_KEY`` or the content of
the file ``$SERVE_APP_ADMIN_KEY_FILE`` in the ingress's environment, or an API key with the ``admin`` scope
(ingress/limits.py). Only SHA-256 digests are kept in memory. No admin key and no admin-scope API key → every
admin route answers 403 (the admin API is off). Every admin call, allowed or not, is written to the audit
log (never the key itself).

The auth middleware runs ``AdminGate.check_scope`` for every ``/admin`` request before routing, so an unknown
caller's body is never read; the route then records the call under the caller the gate named.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
from collections.abc import Callable
from typing import Any

from fastapi import Request

from serve_app.calls.handles import call
from serve_app.errors import Forbidden, Unauthorized


def admin_key_digest() -> bytes | None:
    key = os.environ.get("SERVE_APP_ADMIN_KEY")
    path = os.environ.get("SERVE_APP_ADMIN_KEY_FILE")
    if not key and path:
        try:
            with open(path) as fh:
                key = fh.read().strip()
        except OSError:
            key = None
    return hashlib.sha256(key.encode()).digest() if key else None


def check_admin(authorization: str | None, digest: bytes | None, api_keys: dict | None = None) -> str:
    """Who is calling: "admin" for the admin key, the key's name for an API key with the admin scope."""
    scheme, _, token = (authorization or "").partition(" ")
    if api_keys and scheme.lower() == "bearer" and token.strip():
        from serve_app.ingress.limits import digest as key_digest

        entry = api_keys.get(key_digest(token.strip()))
        if entry is not None and "admin" in entry.scopes:
            return entry.name
    if digest is None and not any("admin" in e.scopes for e in (api_keys or {}).values()):
        raise Forbidden("the admin API is disabled: no admin key is configured (SERVE_APP_ADMIN_KEY)")
    given = hashlib.sha256(token.strip().encode()).digest()
    if digest is None or scheme.lower() != "bearer" or not token.strip() or not hmac.compare_digest(given, digest):
        raise Unauthorized("missing or wrong admin key (Authorization: Bearer <key>)")
    return "admin"


class AdminGate:
    def __init__(self, digest: bytes | None, controller: Callable[[], Any]):
        """``controller``: a callable returning the release controller's actor handle (the audit log's keeper)."""
        self.digest, self._controller = digest, controller

    async def check_scope(self, scope) -> tuple[int, str] | None:
        """Run by the auth middleware for every ``/admin`` request before routing: (status, message) of the
        refusal, or None when the caller may go on. The caller's name is then left in the request's state
        (``admin_caller``): the route records the call under it without checking the key again."""
        authorization = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"authorization"), None)
        state = getattr(scope.get("app"), "state", None)  # the app serving the request, as in the routes
        try:
            who = check_admin(authorization, self.digest, getattr(state, "api_keys", None))
        except Forbidden as exc:
            return 403, exc.message
        except Unauthorized as exc:
            client = scope.get("client")
            await self.audit(client[0] if client else "?", f"{scope.get('method', '?')} {scope.get('path', '')}"[:200],
                             False, "bad or missing key")
            return 401, exc.message
        scope.setdefault("state", {})["admin_caller"] = who
        return None

    async def authorize(self, request: Request, action: str) -> Any:
        """Record the call in the audit log under its caller; returns the release controller to call."""
        actor = f"{request.client.host if request.client else '?'}"
        who = getattr(request.state, "admin_caller", None)
        if who is None:  # reached without the auth middleware's gate: check here
            try:
                who = check_admin(request.headers.get("authorization"), self.digest,
                                  getattr(request.app.state, "api_keys", None))
            except (Forbidden, Unauthorized) as exc:
                if isinstance(exc, Unauthorized):
                    await self.audit(actor, action, False, "bad or missing key")
                raise
        await self.audit(f"{who}@{actor}", action, True, None)
        return await self.controller_handle()

    async def controller_handle(self) -> Any:
        # Looking the actor up (or starting it) is a blocking Ray call: off the event loop.
        return await asyncio.to_thread(self._controller)

    async def audit(self, actor: str, action: str, allowed: bool, detail: str | None) -> None:
        try:
            await call(await self.controller_handle(), "audit", actor, action, allowed, detail, timeout_s=10)
        except Exception:  # noqa: BLE001 - the audit must not turn a refusal into a 500
            pass
