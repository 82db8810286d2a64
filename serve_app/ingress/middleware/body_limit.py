"""413 for a body over the limit, before anything reads or parses it."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.ingress.middleware.common import ingress_context, refuse

UPLOADS = "/v1/files"
_FRAMING = 64 * 1024


class BodyLimitMiddleware:
    """413 for bodies over the limit: early from Content-Length, else while the body streams in.

    The limit is the replica's ``ingress.max_body_bytes`` (read from the context of the app serving the
    request), so the app can carry the middleware before any settings exist.
    """

    def __init__(self, app: ASGIApp, default_max_bytes: int = 4 * 1024 * 1024):
        self.app = app
        self.default_max_bytes = default_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = ingress_context(scope)
        max_bytes = ctx.settings.ingress.max_body_bytes if ctx is not None else self.default_max_bytes
        what = "request body"
        if ctx is not None and ctx.settings.files.enabled and scope["method"] == "POST" and scope["path"] == UPLOADS:
            # A file upload: multipart, streamed to disk by Starlette, bounded by the files' own limit (and the
            # multipart framing around the file). Refused before its parts are read, so before its name is known.
            max_bytes = ctx.settings.files.max_bytes + _FRAMING
            what = f"file upload (files.max_bytes: {ctx.settings.files.max_bytes} bytes per file)"
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > max_bytes:
                    await refuse(send, 413, f"{what} is larger than {max_bytes} bytes")
                    return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    # Raised into whoever reads the body. An HTTPException, because FastAPI's body parsing
                    # re-raises those but turns anything else into a generic 400.
                    raise HTTPException(413, f"{what} is larger than {max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)
