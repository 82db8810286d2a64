"""Admin routes: releases, rollback, scale, status, audit. Thin: authorize, then call the release controller
(a detached actor, see serve_app.release.controller).

Authorization: ``Authorization: Bearer <key>`` where the key is ``$SERVE_APP_ADMIN_KEY`` or the content of
the file ``$SERVE_APP_ADMIN_KEY_FILE`` in the ingress's environment, or an API key with the ``admin`` scope
(ingress/limits.py). Only SHA-256 digests are kept in memory. No admin key and no admin-scope API key → every
admin route answers 403 (the admin API is off). Every admin call, allowed or not,
is written to the audit log (never the key itself).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
from typing import Any

import yaml
from fastapi import Request

from serve_app.errors import Forbidden, InvalidRequest, Unauthorized
from serve_app.ingress.fastapi_app import app
from serve_app.protocol.admin import DeployRequest, RollbackRequest, ScaleRequest


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


class AdminRoutes:
    """Mixed into the Ingress deployment."""

    _admin_digest: bytes | None
    _controller: Any

    def _release_controller(self):
        if self._controller is None:
            from ray import serve

            from serve_app.release.controller import get_controller

            self._controller = get_controller(serve.get_replica_context().app_name)
        return self._controller

    async def admin_gate(self, scope) -> tuple[int, str] | None:
        """Run by the auth middleware for every ``/admin`` request before routing: (status, message) of the
        refusal, or None when the caller may go on. The caller's name is then left in the request's state
        (``admin_caller``): the route records the call under it without checking the key again."""
        authorization = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"authorization"), None)
        state = getattr(scope.get("app"), "state", None)  # the app serving the request, as in the routes
        try:
            who = check_admin(authorization, self._admin_digest, getattr(state, "api_keys", None))
        except Forbidden as exc:
            return 403, exc.message
        except Unauthorized as exc:
            client = scope.get("client")
            await self._audit(client[0] if client else "?", f"{scope.get('method', '?')} {scope.get('path', '')}"[:200],
                              False, "bad or missing key")
            return 401, exc.message
        scope.setdefault("state", {})["admin_caller"] = who
        return None

    async def _admin(self, request: Request, action: str) -> Any:
        actor = f"{request.client.host if request.client else '?'}"
        who = getattr(request.state, "admin_caller", None)
        if who is None:  # reached without the auth middleware's gate: check here
            try:
                who = check_admin(request.headers.get("authorization"), self._admin_digest,
                                  getattr(request.app.state, "api_keys", None))
            except (Forbidden, Unauthorized) as exc:
                if isinstance(exc, Unauthorized):
                    await self._audit(actor, action, False, "bad or missing key")
                raise
        await self._audit(f"{who}@{actor}", action, True, None)
        return self._release_controller()

    async def _audit(self, actor: str, action: str, allowed: bool, detail: str | None) -> None:
        try:
            await asyncio.wait_for(self._release_controller().audit.remote(actor, action, allowed, detail), 10)
        except Exception:  # noqa: BLE001 - the audit must not turn a refusal into a 500
            pass

    @app.get("/admin/status")
    async def admin_status(self, request: Request):
        c = await self._admin(request, "status")
        return await c.status.remote()

    @app.get("/admin/releases")
    async def admin_releases(self, request: Request):
        c = await self._admin(request, "list releases")
        return {"object": "list", "data": await c.releases.remote()}

    @app.get("/admin/releases/{n}")
    async def admin_release(self, n: int, request: Request):
        c = await self._admin(request, f"get release {n}")
        return await c.release.remote(n)

    @app.post("/admin/releases", status_code=202)
    async def admin_deploy(self, request: Request):
        c = await self._admin(request, "deploy")
        raw = await request.body()
        ctype = request.headers.get("content-type", "")
        try:
            data = yaml.safe_load(raw) if "yaml" in ctype else json.loads(raw or b"null")
        except (ValueError, yaml.YAMLError) as exc:
            raise InvalidRequest(f"the body is not valid {'YAML' if 'yaml' in ctype else 'JSON'}: {exc}"[:300]) from None
        if isinstance(data, dict) and "applications" in data:
            data = {"config": data}
        try:
            body = DeployRequest.model_validate(data)
        except Exception as exc:  # pydantic ValidationError
            raise InvalidRequest(f"invalid release request: {exc}"[:1000], "config") from None
        actor = request.client.host if request.client else "?"
        return await c.deploy.remote(body.config, f"admin@{actor}", body.note, canary=body.canary)

    @app.post("/admin/rollback", status_code=202)
    async def admin_rollback(self, body: RollbackRequest, request: Request):
        c = await self._admin(request, "rollback")
        return await c.rollback.remote(f"admin@{request.client.host if request.client else '?'}", body.release)

    @app.post("/admin/scale", status_code=202)
    async def admin_scale(self, body: ScaleRequest, request: Request):
        c = await self._admin(request, f"scale {body.deployment}")
        actor = f"admin@{request.client.host if request.client else '?'}"
        return await c.scale.remote(body.deployment, body.replicas, body.factor, actor)

    @app.get("/admin/audit")
    async def admin_audit(self, request: Request):
        c = await self._admin(request, "audit")
        return {"object": "list", "data": await c.audit_log.remote()}
