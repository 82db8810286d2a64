"""Who may call the admin API, decided once per request, and the audit record of every call.

Authorization: ``Authorization: Bearer <key>`` where the key is ``$SERVE_APP_ADMIN_KEY`` or the content of
the file ``$SERVE_APP_ADMIN_KEY_FILE`` in the ingress's environment, or an API key with the ``admin`` scope
(ingress/limits.py, whose ``bearer`` and ``digest`` read and hash the key here too). Only SHA-256 digests are
kept in memory. No admin key and no admin-scope API key → every admin route answers 403 (the admin API is
off). Every admin call, allowed or not, is written to the audit log (never the key itself).

Two steps, one decision: the auth middleware runs ``AdminGate.check_scope`` for every ``/admin`` request
before routing, so an unknown caller's body is never read (and its refusal is audited there); each admin
route then depends on ``authorized(action)``, which records the call under the caller the gate named and
hands the route the release controller.
"""

from __future__ import annotations

import asyncio
import hmac
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fastapi import Depends, Request

from serve_app.calls.handles import call
from serve_app.errors import Forbidden, Unauthorized
from serve_app.ingress.keybook import KeyBook
from serve_app.ingress.limits import KeyEntry, bearer, digest


def admin_key_digest() -> str | None:
    key = os.environ.get("SERVE_APP_ADMIN_KEY")
    path = os.environ.get("SERVE_APP_ADMIN_KEY_FILE")
    if not key and path:
        try:
            with open(path) as fh:
                key = fh.read().strip()
        except OSError:
            key = None
    return digest(key) if key else None


def check_admin(headers: Iterable[tuple[bytes, bytes]], admin_digest: str | None,
                api_keys: Mapping[str, KeyEntry] | None = None) -> str:
    """Who is calling, from a request's raw headers: "admin" for the admin key, the key's name for an API key
    with the admin scope. Raises Forbidden when the admin API is off, Unauthorized for any other key or none."""
    token = bearer(headers)
    presented = digest(token) if token else None
    entry = api_keys.get(presented) if api_keys and presented else None
    if entry is not None and "admin" in entry.scopes:
        return entry.name
    if admin_digest is None and not any("admin" in e.scopes for e in (api_keys or {}).values()):
        raise Forbidden("the admin API is disabled: no admin key is configured (SERVE_APP_ADMIN_KEY)")
    # The admin key is one secret compared as such: in constant time.
    if admin_digest is None or presented is None or not hmac.compare_digest(presented, admin_digest):
        raise Unauthorized("missing or wrong admin key (Authorization: Bearer <key>)")
    return "admin"


class AdminGate:
    def __init__(self, digest: str | None, controller: Callable[[], Any], keys: KeyBook | None = None):
        """``digest``: the admin key's (``admin_key_digest``). ``controller``: a callable returning the release
        controller's actor handle (the audit log's keeper). ``keys``: the public API's keys (those with the
        admin scope may call the admin API too)."""
        self.digest, self._controller, self._keys = digest, controller, keys

    @property
    def api_keys(self) -> Mapping[str, KeyEntry] | None:
        """The keys that may open the admin API besides the admin key; none until the key book has read the
        store (a key revoked there must not pass on the key file's word)."""
        if self._keys is None or not self._keys.loaded:
            return None
        return self._keys.active

    def caller(self, scope) -> str:
        """``check_admin`` for the request of ``scope``."""
        return check_admin(scope.get("headers", ()), self.digest, self.api_keys)

    async def check_scope(self, scope) -> tuple[int, str] | None:
        """Run by the auth middleware for every ``/admin`` request before routing: (status, message) of the
        refusal, or None when the caller may go on. The caller's name is then left in the request's state
        (``admin_caller``): the route records the call under it without checking the key again."""
        try:
            who = self.caller(scope)
        except (Forbidden, Unauthorized) as exc:
            if self._keys is not None and not self._keys.loaded:  # an admin-scope key may be among the unread
                return 503, "this replica has not read the API keys from the state store yet; retry"
            if isinstance(exc, Forbidden):
                return 403, exc.message
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
                who = self.caller(request.scope)
            except Unauthorized:
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


def authorized(action: str | Callable[..., str]) -> Any:
    """The dependency of every admin route: the call authorized and recorded in the audit log as ``action``;
    its value is the release controller to call.

    ``action`` says what the route does: a string, or a function of the route's own parameters (the same names
    and types as the route's: FastAPI fills both from the one request). Those parameters are validated before
    the call is recorded, so a request the route refuses as invalid (400) is not audited as allowed; a deploy's
    body (JSON or YAML) is the exception: the route reads it after the call is recorded."""
    describe = action if callable(action) else lambda: action

    async def dependency(request: Request, what: str = Depends(describe)) -> Any:
        return await request.app.state.context.admin.authorize(request, what)

    return Depends(dependency)
