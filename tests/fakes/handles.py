"""A deployment handle's method and response, for unit tests that drive the ingress without Ray: ``Method(fn)``
behaves as ``handle.method`` (``.remote(*args)`` returns an awaitable response holding ``fn(*args)``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Response:
    """An awaitable DeploymentResponse holding an answer already computed."""

    def __init__(self, value: Any):
        self.value = value

    def __await__(self):
        async def value():
            return self.value

        return value().__await__()

    def cancel(self) -> None:
        pass


class Method:
    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn

    def remote(self, *args: Any) -> Response:
        return Response(self.fn(*args))
