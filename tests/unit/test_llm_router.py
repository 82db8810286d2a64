"""The LLM deployments' request router (serve_app/llm/router.py) deciding on Serve's own fake replicas
(``FakeRunningReplica``) with Ray's prefix tree in process (tests/fakes/prefix_tree.py): shared prefixes,
sessions, and the calls it must route without a prompt."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from types import SimpleNamespace

import pytest
from ray.serve._private.common import DeploymentHandleSource, DeploymentID, RequestMetadata
from ray.serve._private.request_router.common import PendingRequest
from ray.serve._private.test_utils import FakeRunningReplica

from serve_app.llm import router as router_module
from serve_app.llm.client import chat_request
from serve_app.llm.router import LLMRequestRouter, prompt_text
from serve_app.llm.session_tree import SessionPrefixTree, session_replica
from serve_app.protocol.openai import CompletionRequest
from tests.fakes.prefix_tree import FakeTreeActor

pytestmark = pytest.mark.unit

SYSTEM = "You are the support assistant of a large company. " * 20  # a long shared system prompt


def _router(tree: FakeTreeActor, replicas: list[FakeRunningReplica], threshold: int = 4,
            sessions: bool = True) -> LLMRequestRouter:
    router = LLMRequestRouter(deployment_id=DeploymentID(name="LLMServer-m", app_name="a"),
                              handle_source=DeploymentHandleSource.REPLICA)
    router.initialize_state(sessions=sessions, imbalanced_threshold=threshold, tree_actor=tree)
    router.update_replicas(replicas)
    return router


def _replicas(n: int, queue_len: int = 0) -> list[FakeRunningReplica]:
    out = []
    for i in range(n):
        r = FakeRunningReplica(f"r{i}")
        r.set_queue_len_response(queue_len)
        out.append(r)
    return out


def _chat(question: str, system: str = SYSTEM):
    return chat_request({"model": "m", "messages": [{"role": "system", "content": system},
                                                    {"role": "user", "content": question}]})


def _pending(*args, session: str = "", adapter: str = "", rid: str | None = None) -> PendingRequest:
    rid = rid or uuid.uuid4().hex
    return PendingRequest(args=list(args), kwargs={}, metadata=RequestMetadata(
        request_id=rid, internal_request_id=rid, call_method="generate", session_id=session,
        multiplexed_model_id=adapter))


async def _route(router: LLMRequestRouter, request: PendingRequest):
    """What Serve does: the first rank's least loaded replica takes it; the router hears where it went."""
    ranks = await router.choose_replicas(router._replicas_list, request)
    chosen = ranks[0][0]
    router.on_request_routed(request, chosen.replica_id, None)
    return ranks, chosen


@pytest.fixture
def tree():
    t = FakeTreeActor()
    yield t
    t.close()


def test_requests_sharing_a_prefix_follow_the_replica_that_computed_it(tree):
    async def run():
        router = _router(tree, _replicas(3))
        _, first = await _route(router, _pending("chat", _chat("How do I reset my password?")))
        for question in ("Where is my invoice?", "Can I change my plan?", "What are your opening hours?"):
            ranks, chosen = await _route(router, _pending("chat", _chat(question)))
            assert ranks[0] == [first] and chosen is first
        # A prompt that shares nothing goes to a replica that holds the least prompt text: not the first one.
        _, other = await _route(router, _pending("chat", _chat("Bonjour", system="Tu es un assistant qui parle français. " * 5)))
        assert other is not first

    asyncio.run(run())


def test_load_decides_when_the_replicas_queues_are_imbalanced(tree):
    async def run():
        busy, idle = _replicas(2)
        router = _router(tree, [busy, idle], threshold=4)
        router.on_request_routed(_pending("chat", _chat("first")), busy.replica_id, None)
        ranks = await router.choose_replicas(router._replicas_list, _pending("chat", _chat("second")))
        assert ranks[0] == [busy]  # balanced: the prefix decides
        busy.set_queue_len_response(10)
        ranks = await router.choose_replicas(router._replicas_list, _pending("chat", _chat("third")))
        assert {r.replica_id for r in ranks[0]} == {busy.replica_id, idle.replica_id}  # power of two's pair

    asyncio.run(run())


@pytest.mark.parametrize("args", [
    ("trial", "adapters/a"),  # an adapter trial: a folder, no prompt
    (),  # models(), health(): no arguments
    ("completion", CompletionRequest(model="m", prompt=[1, 2, 3])),  # token ids
    ("completion", SimpleNamespace(prompt="")),  # an empty prompt (Ray's router divides by its length)
])
def test_calls_without_a_text_prompt_are_routed_by_power_of_two(tree, args):
    async def run():
        router = _router(tree, _replicas(2))
        ranks, _ = await _route(router, _pending(*args))
        assert len(ranks[0]) == 2  # power of two's pair, no match asked
        assert tree.calls["prefix_match"] == 0 and tree.calls["insert"] == 0

    asyncio.run(run())


def test_one_replica_never_asks_the_tree(tree):
    async def run():
        router = _router(tree, _replicas(1))
        calls_at_start = sum(tree.calls.values())  # the replica set and the eviction loop, once
        for q in ("a", "b", "c"):
            ranks, chosen = await _route(router, _pending("chat", _chat(q), session="s"))
            assert ranks == [[chosen]]
        assert sum(tree.calls.values()) == calls_at_start

    asyncio.run(run())


def test_a_session_stays_on_one_replica_in_every_caller_and_moves_only_when_its_replica_leaves(tree):
    async def run():
        replicas = _replicas(3)
        callers = [_router(tree, replicas), _router(tree, replicas)]  # two ingress replicas, one actor
        sessions = [f"session-{i}" for i in range(24)]
        pinned = {}
        for s in sessions:
            for turn in range(3):
                for router in callers:
                    ranks, chosen = await _route(router, _pending("chat", _chat(f"turn {turn}"), session=s))
                    assert chosen is pinned.setdefault(s, chosen)
                    assert len(ranks) > 1  # the prefix router's choice follows if the pinned one is full
        counts = Counter(r.replica_id for r in pinned.values())
        assert sorted(counts.values()) == [8, 8, 8]  # spread evenly, as few as they are
        # A replica dies: only its own sessions move, spread over the others.
        gone = replicas[0]
        for router in callers:
            router.on_replica_actor_died(gone.replica_id)
        for s in sessions:
            _, chosen = await _route(callers[0], _pending("chat", _chat("after"), session=s))
            assert chosen is not gone
            if pinned[s] is not gone:
                assert chosen is pinned[s]
            pinned[s] = chosen
        assert sorted(Counter(r.replica_id for r in pinned.values()).values()) == [12, 12]
        assert tree.calls["remove_tenants"] == 2  # told by each caller

    asyncio.run(run())


def test_a_handful_of_sessions_splits_evenly_and_idle_ones_are_forgotten():
    tree = SessionPrefixTree(max_sessions=20)
    replicas = ["r0", "r1"]
    placed = [tree.place_session(f"user-{i}", replicas, 60, 0.0) for i in range(16)]
    assert Counter(placed) == {"r0": 8, "r1": 8}  # hashing split these 5 / 11 in the routing benchmark
    assert all(tree.place_session(f"user-{i}", replicas, 60, 30.0) == placed[i] for i in range(16))
    assert tree.session_counts() == {"r0": 8, "r1": 8}
    tree.place_session("late", replicas, 60, 100.0)  # the others idle for 70 s: forgotten
    assert sum(tree.session_counts().values()) == 1
    for i in range(40):  # at most max_sessions kept
        tree.place_session(f"burst-{i}", replicas, 60, 101.0)
    assert sum(tree.session_counts().values()) == 20 and len(tree._sessions) == 20


def test_a_release_that_changes_the_trees_bounds_restarts_its_eviction_loop():
    tree = SessionPrefixTree()
    try:
        assert tree.start_eviction_loop(400_000, 360_000, 10)
        first = tree._eviction_thread
        assert not tree.start_eviction_loop(400_000, 360_000, 10)  # another caller, same bounds: one loop
        assert tree.start_eviction_loop(20_000, 18_000, 10)  # a release changed routing.tree_max_chars
        assert tree._eviction_thread is not first and not first.is_alive()
    finally:
        tree.stop_eviction_loop()


def test_session_replica_is_a_pure_function_of_the_session_and_the_replicas():
    replicas = _replicas(4)
    picks = {s: session_replica(s, replicas) for s in map(str, range(400))}
    assert all(session_replica(s, list(reversed(replicas))) is r for s, r in picks.items())
    counts = [sum(1 for r in picks.values() if r is x) for x in replicas]
    assert min(counts) > 60  # ~100 each


def test_the_prompt_text_is_what_a_chat_template_renders_first():
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    with_tools = chat_request({"model": "m", "tools": tools, "messages": [{"role": "user", "content": "hi"}]})
    plain = chat_request({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
    assert prompt_text(with_tools).startswith("[{") and "lookup" in prompt_text(with_tools)
    assert prompt_text(with_tools).endswith("\x1euser\x1fhi") and prompt_text(plain) == "\x1euser\x1fhi"
    assert prompt_text(CompletionRequest(model="m", prompt=["a", "b"])) == "ab"
    assert prompt_text("chat") == ""


def test_an_adapters_requests_go_to_replicas_holding_it_and_leave_nothing_behind(tree):
    async def run():
        holder, other, third = _replicas(3)
        holder._model_ids = {"team-a"}
        router = _router(tree, [holder, other, third])
        calls = [_pending("chat", _chat(f"q{i}"), adapter="team-a") for i in range(6)]
        calls += [_pending("chat", _chat(f"s{i}"), adapter="team-a", session=f"s{i}") for i in range(6)]
        routed = await asyncio.wait_for(asyncio.gather(*(router._choose_replica_for_request(c) for c in calls)), 5)
        assert all(r is holder for r in routed)  # Serve's multiplexing; an adapter's sessions hash over its holders
        assert tree.calls["prefix_match"] == 0 and tree.calls["insert"] == 0  # its prompts are not the base model's
        assert not router._pending_requests_by_id and not router._pending_requests_by_model_id  # no leak

    asyncio.run(run())


class _BrokenTree(FakeTreeActor):
    """A tree actor whose calls fail, as a dead actor's do."""

    def __getattr__(self, name):
        method = super().__getattr__(name)
        if name in ("prefix_match", "get_smallest_tenants", "place_session"):
            raise RuntimeError("the actor died")
        return method


def test_a_failing_tree_actor_leaves_no_request_unrouted():
    async def run():
        tree = _BrokenTree()
        router = _router(tree, _replicas(2))
        routed = await asyncio.wait_for(router._choose_replica_for_request(_pending("chat", _chat("q"))), 5)
        assert routed is not None
        for turn in range(3):  # a session without its actor: hashed over the replicas, so still on one
            ranks, chosen = await _route(router, _pending("chat", _chat(f"t{turn}"), session="s"))
            assert chosen is session_replica("s", router._replicas_list)
        tree.close()

    asyncio.run(run())


class _StalledTree(FakeTreeActor):
    """A tree actor that never answers a placement, as one on a node cut off from the caller."""

    def __getattr__(self, name):
        if name == "place_session":
            self.calls[name] += 1
            return SimpleNamespace(remote=lambda *args: asyncio.get_running_loop().create_future())
        return super().__getattr__(name)


def test_a_stalled_tree_actor_delays_sessions_once_then_they_are_hashed(monkeypatch):
    monkeypatch.setattr(router_module, "PLACE_TIMEOUT_S", 0.05)

    async def run():
        tree = _StalledTree()
        router = _router(tree, _replicas(2))
        for turn in range(3):
            _, chosen = await asyncio.wait_for(_route(router, _pending("chat", _chat(f"t{turn}"), session="s")), 1)
            assert chosen is session_replica("s", router._replicas_list)
        assert tree.calls["place_session"] == 1  # not asked again for a while
        tree.close()

    asyncio.run(run())


@pytest.mark.parametrize("replicas", [1, 2])
def test_concurrent_calls_of_one_ingress_request_are_all_routed(tree, replicas):
    # Serve gives every handle call made while serving one ingress request that request's internal id: a cold
    # start's wake-up probe and the chat itself reach the router together with the same id.
    async def run():
        router = _router(tree, _replicas(replicas))
        calls = [_pending("health", rid="one-request"), _pending("chat", _chat("q"), rid="one-request"),
                 _pending("chat", _chat("r"), rid="one-request")]
        routed = await asyncio.wait_for(asyncio.gather(*(router._choose_replica_for_request(c) for c in calls)), 5)
        assert len(routed) == 3 and all(r is not None for r in routed)
        assert not router._pending_requests_by_id  # nothing left behind in Serve's index

    asyncio.run(run())


def test_with_sessions_off_a_session_is_routed_by_its_prefix_like_any_request(tree):
    async def run():
        router = _router(tree, _replicas(3), sessions=False)
        _, first = await _route(router, _pending("chat", _chat("q0")))
        for i in range(12):  # each its own session; all share the system prompt the first replica holds
            ranks, chosen = await _route(router, _pending("chat", _chat(f"q{i}"), session=f"s{i}"))
            assert chosen is first and len(ranks) == 1

    asyncio.run(run())
