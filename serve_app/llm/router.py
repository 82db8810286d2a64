"""Which LLM replica a request goes to: Serve's request-router API (``request_router_config`` on the LLM
deployment, serve_app/config/apps.py) with Ray's prefix-cache affinity router, subclassed where it must be.

Several replicas of one model each keep their own vLLM prefix cache. Serve's default power-of-two choice scatters
requests that share a prefix (a system prompt, a tool schema, a conversation's history, an agent run's growing
transcript) and each replica computes it again. Ray's ``PrefixCacheAffinityRouter`` keeps a character-level tree
of the prompts it routed, per replica, in one actor per deployment, and sends a request to the replica whose
prompts share the longest prefix with it while the replicas' queues are within ``imbalanced_threshold`` of each
other (power of two otherwise; below ``match_rate_threshold``, to the replica holding the least text).

What this subclass changes, and why:

- **Sessions** (a handle call's ``session_id``: an agent run, a Responses conversation or chain, an
  ``x-session-id`` header) go to one replica, placed on their first call on the replica with the fewest live
  sessions and remembered in the tree actor, which every caller (each ingress replica, the agent) asks
  (serve_app/llm/session_tree.py). When that replica is full, power of two picks another; one that died is no
  longer a candidate, so its sessions (only those) are placed again at once. An adapter's sessions are placed over
  the replicas holding it. Should the actor not answer, the session is hashed over the replicas (rendezvous
  hashing: the same answer in every caller without shared state).
- **Adapters** are routed by Serve's multiplexing (replicas holding the adapter first): Ray's router applies it
  twice, the second time over the replicas the first excluded.
- **One replica** (or none to choose from): power of two, with no call to the tree actor at all.
- **The prompt's text** covers what a chat template renders first (the tools, then each message's role and
  content). A call with no text (an adapter trial, a health probe, token-id prompts, an empty prompt) is routed by
  power of two instead of raising or dividing by zero.
- **No blocking call on a request's path**: the tree actor is asked with ``await``; prompts and replica changes
  are recorded without waiting (Ray runs one caller's calls on an actor in order). (Making the actor, once per
  caller, waits for Ray, as Ray's router does.) A failing tree actor never leaves a request unrouted: power of
  two takes it, and a dead actor is made again.
- **Each routing task's choice goes to its own request**, even when several calls of one ingress request share
  Serve's internal request id (``_fulfill_next_pending_request``).
- **The tree actor** is ours (Ray's tree plus the sessions, under its own name), needs no CPU of Ray's
  (``num_cpus=0``: a bare actor otherwise waits for a free logical CPU), trims itself (eviction on), and is
  removed with its application (``drop_tree``), not only at ``serve.shutdown``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import ray
from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router import PrefixCacheAffinityRouter
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
from ray.serve._private.request_router import PowerOfTwoChoicesRequestRouter

from serve_app.llm.session_tree import SessionTreeActor, session_replica

logger = logging.getLogger("ray.serve")

_TEXT = "_llm_router_prompt_text"  # where a pending request's prompt text is kept
TREE_ACTOR = "LlmSessionPrefixTree"  # one per deployment, told apart by namespace as Ray's are
# What routers of earlier releases (Ray's tree, no sessions) named theirs: removed with the application too.
_EARLIER_TREE_ACTOR = "LlmPrefixTreeActor"
RENEW_PERIOD_S = 10.0
PLACE_TIMEOUT_S = 5.0  # a placement is a dictionary lookup in the actor: milliseconds when it answers


def tree_namespace(app: str, deployment: str) -> str:
    """The namespace of ``deployment``'s tree actor (the one Ray's router would use for its own)."""
    return "::".join((SERVE_NAMESPACE, app, deployment))


def drop_tree(app: str, deployment: str) -> bool:
    """Remove the tree actor of a deleted application's deployment; False when it had none."""
    dropped = False
    for name in (TREE_ACTOR, _EARLIER_TREE_ACTOR):
        try:
            actor = ray.get_actor(name, namespace=tree_namespace(app, deployment))
        except ValueError:
            continue
        ray.kill(actor, no_restart=True)
        dropped = True
    return dropped


def _text(value: Any) -> str:
    """The text of a message content: a string, or the text parts of a list of parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(_text(part.get("text") if isinstance(part, dict) else part) for part in value)
    return ""


def prompt_text(arg: Any) -> str:
    """What a request's prompt starts with, as text: a chat's tools, then each message's role, content and tool
    calls; a completion's prompt (a string or strings). "" when there is none to go by (token ids)."""
    messages = getattr(arg, "messages", None)
    if isinstance(messages, list):
        tools = getattr(arg, "tools", None)
        head = json.dumps([t.model_dump() if hasattr(t, "model_dump") else t for t in tools]) if tools else ""
        parts = [head]
        for m in messages:
            m = m if isinstance(m, dict) else getattr(m, "model_dump", lambda: {})()
            parts.append(f"\x1e{m.get('role', '')}\x1f{_text(m.get('content'))}")
            if m.get("tool_calls"):
                parts.append(json.dumps(m["tool_calls"], default=str))
        return "".join(parts) if len(parts) > 1 or head else ""
    prompt = getattr(arg, "prompt", None)
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return "".join(prompt)
    return ""


class LLMRequestRouter(PrefixCacheAffinityRouter):
    """Prefix-cache affinity with sessions, for the LLM deployments (see the module's docstring)."""

    _eviction_loop_running: bool  # set by Ray's initialize_state

    def initialize_state(
        self,
        sessions: bool = True,
        session_ttl_s: float = 600.0,
        imbalanced_threshold: float = 4,
        match_rate_threshold: float = 0.1,
        eviction_threshold_chars: int = 400_000,
        eviction_target_chars: int = 360_000,
        eviction_interval_secs: int = 10,
        tree_actor: Any = None,
    ) -> None:
        self._sessions, self._session_ttl_s, self._renewed = sessions, session_ttl_s, float("-inf")
        self._sessions_hashed_until = float("-inf")
        if tree_actor is None:
            tree_actor = self._make_tree_actor()
        super().initialize_state(
            imbalanced_threshold=imbalanced_threshold, match_rate_threshold=match_rate_threshold, do_eviction=True,
            eviction_threshold_chars=eviction_threshold_chars, eviction_target_chars=eviction_target_chars,
            eviction_interval_secs=eviction_interval_secs, tree_actor=tree_actor)

    def _make_tree_actor(self):
        deployment = self._deployment_id
        actor = SessionTreeActor.options(
            name=TREE_ACTOR, namespace=tree_namespace(deployment.app_name, deployment.name), get_if_exists=True,
            lifetime="detached", num_cpus=0).remote()
        # Also removed at serve.shutdown, as Ray's own router does (and by drop_tree with its application).
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        ray.get(controller._register_shutdown_cleanup_actor.remote(actor))
        return actor

    def _extract_text_from_request(self, pending_request) -> str:
        # Asked when choosing and again when recording where the request went: kept on the request.
        text = getattr(pending_request, _TEXT, None)
        if text is None:
            # An adapter's requests are left to Serve's multiplexing (``choose_replicas``): no text, no tree entry.
            adapter = pending_request.metadata.multiplexed_model_id
            text = "" if adapter else next((t for t in map(prompt_text, pending_request.args or ()) if t), "")
            setattr(pending_request, _TEXT, text)
        return text

    async def choose_replicas(self, candidate_replicas, pending_request=None):
        power_of_two = PowerOfTwoChoicesRequestRouter.choose_replicas
        if len(candidate_replicas) < 2 or pending_request is None:
            return await power_of_two(self, candidate_replicas, pending_request)
        adapter, session = pending_request.metadata.multiplexed_model_id, pending_request.metadata.session_id
        if session and self._sessions:
            # Placed over the replicas holding the request's adapter when some do (Serve's multiplexing would
            # send it there); the fallback, when that replica is full, is power of two's (no tree call).
            holders = [r for r in candidate_replicas if adapter in r.multiplexed_model_ids] if adapter else []
            pinned = await self._session_replica(session, holders or candidate_replicas)
            return [[pinned], *await power_of_two(self, candidate_replicas, pending_request)]
        if adapter:  # Serve's multiplexing: replicas holding the adapter first (Ray's router would apply it twice)
            return await power_of_two(self, candidate_replicas, pending_request)
        try:
            return await super().choose_replicas(candidate_replicas, pending_request)
        except Exception as exc:  # noqa: BLE001 - a request must never be left unrouted by the tree's failure
            logger.warning("prefix routing failed (%s: %s); routing by power of two", type(exc).__name__, exc)
            await self._renew_tree(exc)
            return await power_of_two(self, candidate_replicas, pending_request)

    async def _session_replica(self, session: str, replicas: list) -> Any:
        """The session's replica as the tree actor keeps it; hashed over ``replicas`` when it cannot be asked."""
        by_id = {r.replica_id.to_full_id_str(): r for r in replicas}
        try:
            if time.monotonic() >= self._sessions_hashed_until:
                placing = self._tree_actor.place_session.remote(session, list(by_id), self._session_ttl_s)
                return by_id[await asyncio.wait_for(placing, PLACE_TIMEOUT_S)]
        except TimeoutError:  # an actor that stalls (its node cut off) is not waited for again for a while
            logger.warning("session placement took over %.0f s; hashing sessions for %.0f s", PLACE_TIMEOUT_S,
                           RENEW_PERIOD_S)
            self._sessions_hashed_until = time.monotonic() + RENEW_PERIOD_S
        except Exception as exc:  # noqa: BLE001 - a session is never left unrouted by the tree's failure
            logger.warning("session placement failed (%s: %s); hashing the session", type(exc).__name__, exc)
            await self._renew_tree(exc)
        return session_replica(session, replicas)

    async def _renew_tree(self, exc: Exception) -> None:
        """A tree actor that died (its node lost, its application removed and added again) is made again, at most
        every ``RENEW_PERIOD_S``; it starts empty and learns the replicas again."""
        if not isinstance(exc, ray.exceptions.RayActorError) or time.monotonic() - self._renewed < RENEW_PERIOD_S:
            return
        self._renewed = time.monotonic()
        try:
            self._tree_actor = await asyncio.to_thread(self._make_tree_actor)
        except Exception as again:  # noqa: BLE001 - power of two meanwhile; tried again after the period
            logger.warning("the prefix tree actor could not be made again: %s", again)
            return
        self._tree_actor.add_tenants.remote([r.to_full_id_str() for r in self._replica_id_set], time.time())
        self._eviction_loop_running = False  # started again at the next replica update

    async def _prefix_match_best_replicas(self, pending_request, candidate_replicas):
        """Ray's choice, asked of the tree actor without blocking: the replicas whose prompts share the longest
        prefix while the queues are balanced; [[]] (power of two decides) otherwise."""
        text = self._extract_text_from_request(pending_request) if pending_request is not None else ""
        if not text or len(candidate_replicas) < 2 or not await self._balanced(candidate_replicas):
            return [[]]
        ids = [r.replica_id.to_full_id_str() for r in candidate_replicas]
        matched, holders = await self._tree_actor.prefix_match.remote(text, ids)
        if len(matched) / len(text) < self._match_rate_threshold:
            holders = await self._tree_actor.get_smallest_tenants.remote()
        by_id = {r.replica_id.to_full_id_str(): r for r in candidate_replicas}
        return [[by_id[h] for h in holders or () if h in by_id]]

    async def _balanced(self, candidate_replicas) -> bool:
        """Whether the candidates' queue lengths (Serve's cache, probed where it has none) differ by at most
        ``imbalanced_threshold``."""
        lengths: list[int] = []
        unknown = []
        for r in candidate_replicas:
            n = self._replica_queue_len_cache.get(r.replica_id) if self._use_replica_queue_len_cache else None
            if n is None or n >= r.max_ongoing_requests:
                unknown.append(r)
            else:
                lengths.append(n)
        if unknown:
            lengths += [n for _, n in await self._probe_queue_lens(unknown, 0) if n is not None]
        return not lengths or max(lengths) - min(lengths) <= self._imbalanced_threshold

    def _fulfill_next_pending_request(self, replica, request_metadata=None) -> None:
        """Give the replica a routing task chose to that task's own request. Serve's matching for a router
        without its FIFO mixin looks the request up by its internal request id, which every handle call made
        while serving one ingress request shares (Serve copies the caller's request context): of two concurrent
        calls of one request to this deployment (a cold start's wake-up probe and the request itself), one would
        never be matched and wait until its deadline. The request is found by its own metadata object instead."""
        for pending in self._pending_requests_to_fulfill:
            if pending.metadata is request_metadata and not pending.future.done():
                self._cancel_routing_task_for_pending_request(pending)
                self._record_queue_wait_time(pending)
                pending.future.set_result(replica)
                if self._pending_requests_by_id.get(pending.metadata.internal_request_id) is pending:
                    self._remove_pending_request_from_indices(pending)
                # Serve's per-adapter index of pending requests is cleaned as its FIFO matching would.
                self._get_pending_request_matching_multiplexed_model_id(request_metadata)
                return

    def update_replicas(self, replicas) -> None:
        """Serve's update (Ray's router's, without its blocking calls): the tree learns which replicas came and
        went."""
        old = set(self._replica_id_set)
        super(PrefixCacheAffinityRouter, self).update_replicas(replicas)
        added, removed = self._replica_id_set - old, old - self._replica_id_set
        if added:
            self._tree_actor.add_tenants.remote([r.to_full_id_str() for r in added], time.time())
        if removed:
            self._tree_actor.remove_tenants.remote([r.to_full_id_str() for r in removed])
        if not self._eviction_loop_running:
            self._tree_actor.start_eviction_loop.remote(
                self._eviction_threshold_chars, self._eviction_target_chars, self._eviction_interval_secs)
            self._eviction_loop_running = True

    def on_replica_actor_died(self, replica_id) -> None:
        super(PrefixCacheAffinityRouter, self).on_replica_actor_died(replica_id)
        self._tree_actor.remove_tenants.remote([replica_id.to_full_id_str()])

    def on_request_routed(self, pending_request, replica_id, result) -> None:
        if pending_request is None or len(self._replica_id_set) < 2:
            return  # nothing to choose between: the tree is not kept
        text = self._extract_text_from_request(pending_request)
        if text:
            self._tree_actor.insert.remote(text, replica_id.to_full_id_str(), time.time())
