"""What the ingress's middleware share: the replica's context (what the app serving a request holds), a refusal
answered before the app (an OpenAI error body), and the request method as a bounded label value."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from starlette.types import Scope, Send

from serve_app.errors import error_body

if TYPE_CHECKING:  # the context is built above the middleware; only its type is named here
    from serve_app.ingress.context import IngressContext


def ingress_context(scope: Scope) -> IngressContext | None:
    """The IngressContext of the app serving the request (``app.state.context``; None in an app without one)."""
    return getattr(getattr(scope.get("app"), "state", None), "context", None)


async def refuse(send: Send, status: int, message: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(error_body(status, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(scope: Scope) -> str:
    # A label value: any other token a client sends is "OTHER", never the token itself.
    method = scope.get("method", "")
    return method if method in _METHODS else "OTHER"
