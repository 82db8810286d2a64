"""Stored responses and conversations of the Responses API, in the state store, so that a follow-up
(``previous_response_id``, ``conversation``) works on whichever ingress replica answers it, after the replica
that stored the first turn is gone and after the whole app restarted.

Every row carries its tenant (the API key's, serve_app/protocol/keys.py; "" while keys are off) and every read
and write names it: another tenant's response or conversation reads as absent, exactly like an unknown one.

A stored response keeps its whole input (the items of the chain before it, then its own), so a follow-up reads
one row, whatever the chain's length, and deleting an earlier response of the chain does not break the later
ones. Responses past their retention are deleted by ``prune``; conversations live until they are deleted.
Calls are blocking (SQLAlchemy): the ingress runs them in a thread; a store that does not answer becomes 503.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update

from serve_app.state import store
from serve_app.state.tables import conversation_items, conversations, responses


class ResponseStore:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._pruned_at: float | None = None  # when this process last pruned (monotonic)

    # Responses

    @store.answering
    def record(self, tenant: str, body: dict[str, Any], input_items: list[dict[str, Any]] | None,
               conversation_id: str | None = None, new_items: Sequence[dict[str, Any]] = ()) -> bool:
        """One answered response, in one transaction: the response with its input items (``input_items`` None:
        ``store: false``, not kept) and, when it continued a conversation, its new items appended to it. False
        when the conversation is gone (deleted meanwhile): nothing is written then."""
        with self.engine.begin() as conn:
            if conversation_id is not None:
                if self._owned(conn, tenant, conversation_id) is None:
                    return False
                self._append(conn, conversation_id, list(new_items), time.time())
            if input_items is not None:
                conn.execute(insert(responses).values(id=body["id"], tenant=tenant, created_at=time.time(),
                                                      body=json.dumps(body), input_items=json.dumps(input_items)))
        return True

    @store.answering
    def get(self, tenant: str, response_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """(the response, its input items), or None when the tenant has no such response."""
        with self.engine.connect() as conn:
            row = conn.execute(select(responses.c.body, responses.c.input_items)
                               .where(responses.c.id == response_id, responses.c.tenant == tenant)).first()
        return None if row is None else (json.loads(row.body), json.loads(row.input_items))

    @store.answering
    def delete(self, tenant: str, response_id: str) -> bool:
        with self.engine.begin() as conn:
            done = conn.execute(delete(responses).where(responses.c.id == response_id, responses.c.tenant == tenant))
        return done.rowcount > 0

    @store.answering
    def prune(self, older_than_s: float) -> int:
        """Delete the responses stored more than ``older_than_s`` ago (every tenant's), and the items of
        conversations deleted while a response was adding to them (nothing can read those)."""
        with self.engine.begin() as conn:
            done = conn.execute(delete(responses).where(responses.c.created_at < time.time() - older_than_s))
            conn.execute(delete(conversation_items).where(
                conversation_items.c.conversation_id.not_in(select(conversations.c.id))))
        return done.rowcount

    def due(self, period_s: float) -> bool:
        """Whether this process has not pruned within ``period_s`` (no I/O: asked on the request path)."""
        return self._pruned_at is None or time.monotonic() - self._pruned_at >= period_s

    def prune_due(self, older_than_s: float, period_s: float) -> int:
        """``prune`` when this process has not pruned within ``period_s``: retention costs one statement per
        period and replica, not one per response."""
        now = time.monotonic()
        if self._pruned_at is not None and now - self._pruned_at < period_s:
            return 0
        self._pruned_at = now
        return self.prune(older_than_s)

    # Conversations

    def _owned(self, conn, tenant: str, conversation_id: str):
        return conn.execute(select(conversations).where(conversations.c.id == conversation_id,
                                                        conversations.c.tenant == tenant)).first()

    @store.answering
    def create_conversation(self, tenant: str, conversation_id: str, metadata: dict[str, str],
                            items: list[dict[str, Any]]) -> dict[str, Any]:
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(insert(conversations).values(id=conversation_id, tenant=tenant, created_at=now,
                                                      metadata=json.dumps(metadata)))
            self._append(conn, conversation_id, items, now)
        return _conversation(conversation_id, now, metadata)

    @store.answering
    def conversation(self, tenant: str, conversation_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = self._owned(conn, tenant, conversation_id)
        return None if row is None else _conversation(row.id, row.created_at, json.loads(row.metadata))

    @store.answering
    def update_conversation(self, tenant: str, conversation_id: str, metadata: dict[str, str]) -> dict[str, Any] | None:
        with self.engine.begin() as conn:
            row = self._owned(conn, tenant, conversation_id)
            if row is None:
                return None
            conn.execute(update(conversations).where(conversations.c.id == conversation_id)
                         .values(metadata=json.dumps(metadata)))
        return _conversation(row.id, row.created_at, metadata)

    @store.answering
    def delete_conversation(self, tenant: str, conversation_id: str) -> bool:
        with self.engine.begin() as conn:
            done = conn.execute(delete(conversations).where(conversations.c.id == conversation_id,
                                                            conversations.c.tenant == tenant))
            if done.rowcount:
                conn.execute(delete(conversation_items).where(conversation_items.c.conversation_id == conversation_id))
        return done.rowcount > 0

    @staticmethod
    def _append(conn, conversation_id: str, items: list[dict[str, Any]], now: float) -> None:
        if items:
            conn.execute(insert(conversation_items), [
                {"conversation_id": conversation_id, "id": item["id"], "created_at": now, "item": json.dumps(item)}
                for item in items])

    @store.answering
    def add_items(self, tenant: str, conversation_id: str, items: list[dict[str, Any]]) -> bool:
        """Append ``items`` (each with its ``id``) to the tenant's conversation; False when it has none such."""
        with self.engine.begin() as conn:
            if self._owned(conn, tenant, conversation_id) is None:
                return False
            self._append(conn, conversation_id, items, time.time())
        return True

    @store.answering
    def items(self, tenant: str, conversation_id: str) -> list[dict[str, Any]] | None:
        """Every item of the conversation, oldest first (None: the tenant has no such conversation)."""
        with self.engine.connect() as conn:
            if self._owned(conn, tenant, conversation_id) is None:
                return None
            rows = conn.execute(select(conversation_items.c.item)
                                .where(conversation_items.c.conversation_id == conversation_id)
                                .order_by(conversation_items.c.n)).all()
        return [json.loads(r.item) for r in rows]

    @store.answering
    def item(self, tenant: str, conversation_id: str, item_id: str) -> dict[str, Any] | bool | None:
        """The item (the first of that id), False when the conversation has none such, None when the tenant has
        no such conversation."""
        with self.engine.connect() as conn:
            if self._owned(conn, tenant, conversation_id) is None:
                return None
            row = conn.execute(select(conversation_items.c.item).where(
                conversation_items.c.conversation_id == conversation_id, conversation_items.c.id == item_id)
                .order_by(conversation_items.c.n).limit(1)).first()
        return False if row is None else json.loads(row.item)

    @store.answering
    def delete_item(self, tenant: str, conversation_id: str, item_id: str) -> bool | None:
        """None: no such conversation; False: no such item in it."""
        with self.engine.begin() as conn:
            if self._owned(conn, tenant, conversation_id) is None:
                return None
            done = conn.execute(delete(conversation_items).where(
                conversation_items.c.conversation_id == conversation_id, conversation_items.c.id == item_id))
        return done.rowcount > 0


def _conversation(conversation_id: str, created_at: float, metadata: dict[str, str]) -> dict[str, Any]:
    return {"id": conversation_id, "object": "conversation", "created_at": int(created_at), "metadata": metadata}
