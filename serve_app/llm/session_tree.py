"""What the LLM router (serve_app/llm/router.py) shares between its callers, in one actor per deployment: Ray's
prefix tree (the prompts each replica was sent) and the replica of each live session.

A session is placed once, on its first call, on the replica holding the fewest live sessions, and stays there
while that replica is a candidate: every caller (each ingress replica, the agent) asks the same actor, so they
agree, and the sessions spread evenly however few there are. (Hashing a session over the replicas needs no shared
state, but it is even only over many sessions: 16 sessions split 5 / 11 over two replicas in the routing
benchmark, and the crowded replica's KV cache overflowed.) A session whose replica left is placed again, alone; a
session unused for ``session_ttl_s`` is forgotten (its prefix has left the KV cache by then on a busy replica) and
placed again if it comes back. Hashing remains the router's answer when the actor cannot be asked.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter, OrderedDict
from typing import Any

import ray
from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree import PrefixTree


def rendezvous_weight(session: str, replica: str) -> int:
    key = f"{session}\x00{replica}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


def session_replica(session: str, replicas: list[Any]) -> Any:
    """The replica a session hashes to (rendezvous hashing: the same answer in every caller for the same replicas,
    and a replica leaving moves only its own sessions); the router's answer when the tree actor cannot be asked."""
    return max(replicas, key=lambda r: rendezvous_weight(session, r.replica_id.unique_id))


class SessionPrefixTree(PrefixTree):
    """Ray's prefix tree with the replica of each live session (see the module's docstring)."""

    def __init__(self, max_sessions: int = 100_000) -> None:
        super().__init__()
        self._max_sessions = max_sessions
        self._sessions: OrderedDict[str, tuple[str, float]] = OrderedDict()  # least recently used first
        self._live: Counter[str] = Counter()  # live sessions per replica
        self._eviction_bounds: tuple[int, int, float] | None = None  # the running eviction loop's

    def place_session(self, session: str, candidates: list[str], ttl_s: float, time_s: float | None = None) -> str:
        """The replica (one of ``candidates``, full replica ids) ``session`` goes to: where it went before while
        that replica is a candidate, else the candidate with the fewest live sessions (ties broken by hashing).
        ``ttl_s`` comes with every call, so a release that changes it takes effect in the actor that outlives the
        release; the time is the actor's own (callers' clocks may differ), given only by tests."""
        time_s = time.time() if time_s is None else time_s
        self._forget_idle(time_s, ttl_s)
        held = self._sessions.pop(session, None)
        if held is not None and held[0] in candidates:
            replica = held[0]
        else:
            if held is not None and self._live[held[0]] > 0:
                self._live[held[0]] -= 1
            replica = min(candidates, key=lambda r: (self._live[r], -rendezvous_weight(session, r)))
            self._live[replica] += 1
        self._sessions[session] = (replica, time_s)
        return replica

    def start_eviction_loop(self, eviction_threshold: int, eviction_target: int, interval_secs: float) -> bool:
        """Ray's loop, started again when a caller brings other bounds (``routing.tree_max_chars`` changed by a
        release: the actor outlives it, and Ray's would keep the first caller's bounds)."""
        bounds = (eviction_threshold, eviction_target, interval_secs)
        if self._eviction_thread is not None and bounds != self._eviction_bounds:
            self.stop_eviction_loop()
        self._eviction_bounds = bounds
        return super().start_eviction_loop(*bounds)

    def session_counts(self) -> dict[str, int]:
        """Live sessions per replica (what the next new session is placed by)."""
        return {r: n for r, n in self._live.items() if n}

    def remove_tenants(self, tenants: list[str]) -> dict[str, int]:
        # The replicas' sessions are placed again at their next call (their replica is no longer a candidate).
        for replica in tenants:
            self._live.pop(replica, None)
        return super().remove_tenants(tenants)

    def _forget_idle(self, now: float, ttl_s: float) -> None:
        while self._sessions:
            session, (replica, last) = next(iter(self._sessions.items()))
            if now - last <= ttl_s and len(self._sessions) < self._max_sessions:
                return
            del self._sessions[session]
            if self._live[replica] > 0:
                self._live[replica] -= 1


SessionTreeActor = ray.remote(SessionPrefixTree)
