"""The LLM router's tree actor in process: the class its actor wraps (``SessionPrefixTree``: Ray's own
``PrefixTree`` with the sessions), called the way the router calls the actor (``tree.method.remote(*args)``,
awaited or not), with the calls counted."""

from __future__ import annotations

from collections import Counter
from typing import Any

from serve_app.llm.session_tree import SessionPrefixTree


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
        self.tree = SessionPrefixTree()
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_") or not callable(getattr(SessionPrefixTree, name, None)):
            raise AttributeError(name)
        return _Method(self, name)

    def close(self) -> None:
        self.tree.stop_eviction_loop()
