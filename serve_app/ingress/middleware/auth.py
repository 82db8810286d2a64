"""API keys of the public API and the admin API's gate, checked before the body is read."""

from __future__ import annotations

import math

from starlette.types import ASGIApp, Receive, Scope, Send

from serve_app.ingress.limits import bearer, digest
from serve_app.ingress.middleware.common import ingress_context, refuse

OPEN_PATHS = frozenset({"/healthz", "/livez"})
# The answer of a replica that has not read the API keys yet (ingress/keybook.py).
NOT_READ = (503, "this replica has not read the API keys from the state store yet; retry", [(b"retry-after", b"1")])


class AuthMiddleware:
    """API keys of the public API (off unless the replica's context holds keys; see ingress/limits.py).

    Every route but ``/healthz`` and ``/livez`` then needs ``Authorization: Bearer <key>`` of a known key;
    ``/admin/*`` has its own check (the admin key, or an API key with the admin scope): the context's admin gate
    (``AdminGate.check_scope``) runs here too, so an unauthorized admin call is refused before its body is read or
    validated. The key's request bucket is charged here; its token bucket by the routes that generate, which
    know ``max_tokens``. The key's entry is left in ``request.state.api_key``."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = ingress_context(scope)
        if ctx is not None:
            ctx.keys.start()  # the key book's poll, once per replica (a no-op after the first call)
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == "/admin" or path.startswith("/admin/")):
            refusal = await ctx.admin.check_scope(scope) if ctx is not None else None
            if refusal is not None:
                await refuse(send, *refusal)
                return
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http" or ctx is None or path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        # ``loaded`` first, the keys after: the key book sets the keys before it says they are loaded.
        if not ctx.keys.loaded:
            # Started while the state store does not answer: whether keys exist is unknown, so nothing passes
            # (failing open would serve anonymous callers of an app whose keys are on).
            await refuse(send, *NOT_READ)
            return
        keys = ctx.api_keys
        if keys is None:  # key checking off; an empty dict (every key revoked) refuses everyone
            await self.app(scope, receive, send)
            return
        from serve_app.observability.metrics import metric

        token = bearer(scope.get("headers", ()))
        entry = keys.get(digest(token)) if token else None
        if entry is None:
            await refuse(send, 401, "missing or unknown API key (Authorization: Bearer <key>)")
            return
        scope.setdefault("state", {})["api_key"] = entry
        limiter = ctx.limiter
        kind, wait = await limiter.acquire(entry, requests=1)
        if kind is not None:
            metric("serve_app_rate_limited_requests").inc(tags={"limit": kind})
            # inf: a key whose limit is under one request a minute (a key file may say so) never fits.
            retry = 60 if math.isinf(wait) else max(1, math.ceil(wait))
            await refuse(send, 429, f"rate limit of this API key reached ({entry.requests_per_minute:g} requests per "
                          "minute); retry later", [(b"retry-after", str(retry).encode()),
                                                   *limiter.headers(entry)])
            return

        async def with_limits(message) -> None:
            # The buckets as they stand when the answer starts: the route has charged its tokens by then.
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *limiter.headers(entry)]}
            await send(message)

        await self.app(scope, receive, with_limits)
