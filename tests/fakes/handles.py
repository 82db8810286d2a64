"""A deployment handle's method and response, for unit tests that drive the ingress without Ray: ``Method(fn)``
behaves as ``handle.method`` (``.remote(*args)`` returns an awaitable response holding ``fn(*args)``);
``StreamResponse(items)`` as a streaming call's response generator."""

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

    def remote(self, *args: Any, **kwargs: Any) -> Response:
        return Response(self.fn(*args, **kwargs))


class StreamResponse:
    """A streaming DeploymentResponseGenerator's interface: async iteration over ``items`` and cancel()."""

    def __init__(self, items):
        self.items = list(items)

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.items:
            raise StopAsyncIteration
        return self.items.pop(0)

    def cancel(self):
        self.items = []
