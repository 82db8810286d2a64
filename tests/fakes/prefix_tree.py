"""The prefix router's tree actor in process: Ray's own ``PrefixTree`` (the class its actor wraps), called the
way the router calls the actor (``tree.method.remote(*args)``, awaited or not), with the calls counted."""

from __future__ import annotations

from collections import Counter
from typing import Any

from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree import PrefixTree


class _Done:
    """A finished call: awaiting it gives its result, as awaiting an ObjectRef does."""

    def __init__(self, value: Any):
        self.value = value

    def __await__(self):
        return self.value
        yield  # a generator: what __await__ must return


class _Method:
    def __init__(self, tree: FakeTreeActor, name: str):
        self.tree, self.name = tree, name

    def remote(self, *args: Any) -> _Done:
        self.tree.calls[self.name] += 1
        return _Done(getattr(self.tree.tree, self.name)(*args))


class FakeTreeActor:
    def __init__(self):
        self.tree = PrefixTree()
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_") or not callable(getattr(PrefixTree, name, None)):
            raise AttributeError(name)
        return _Method(self, name)

    def close(self) -> None:
        self.tree.stop_eviction_loop()
