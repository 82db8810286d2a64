"""What the ingress's middleware share: a refusal answered before the app (an OpenAI error body), and the
request method as a bounded label value."""

from __future__ import annotations

import json
from collections.abc import Sequence

from starlette.types import Scope, Send

from serve_app.errors import error_body


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
