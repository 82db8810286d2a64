"""Durable release history and admin audit log, in the state store (serve_app/state/store.py: SQLite in the
state directory by default, PostgreSQL by URL).

A release row holds the whole Serve config that was deployed, so any release can be deployed again
exactly. Rows are written before anything is applied and updated with the outcome, so a controller that
dies mid-deploy leaves a row that says so. Only the release controller (one actor per cluster) writes them.

Each row also holds the schema version its config was written in (serve_app/config/versions.py): the
history gives configs back as they were stored, and whoever deploys one migrates it first
(release/plan.py ``stored_config``).
"""

from __future__ import annotations

import copy
import json
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from serve_app.config.versions import CURRENT_VERSION
from serve_app.state import store
from serve_app.state.tables import audit as audit_table
from serve_app.state.tables import releases

# How often (in audit records) retention is applied: often enough to bound the log, rarely enough to cost
# nothing per call.
PRUNE_EVERY = 64
_COLUMNS = [c.name for c in releases.columns]
# Rows as dicts. A name of its own: inside History, ``list`` is the method.
Records = list[dict[str, Any]]


# Every call is store.answering: the store not answering is a 503 naming it, so the controller's callers get a
# clear refusal and a release whose row cannot be written is never applied.
class History:
    def __init__(self, where: str | Path | Engine):
        """``where``: the store's engine, or a state directory (its default SQLite store, migrated here)."""
        if isinstance(where, Engine):
            self.engine = where
        else:
            self.engine = store.make_engine(f"sqlite:///{Path(where) / store.DEFAULT_FILE}")
            store.migrate(self.engine, Path(where))
        self._lock = threading.Lock()
        # The last good release, read on every /healthz and admin call: kept in memory between writes.
        self._last_good: dict[str, Any] | None = None
        self._audits = 0

    def _row(self, row) -> dict[str, Any]:
        d = dict(row._mapping)
        d["config"] = json.loads(d["config"])
        d["changed"] = json.loads(d["changed"])
        return d

    def _rows(self, query) -> Records:
        with self.engine.connect() as conn:
            return [self._row(r) for r in conn.execute(query)]

    @store.answering
    def add(self, *, actor: str, kind: str, note: str | None, config: dict, changed: list[str], status: str,
            scope: str = "app") -> int:
        """Record a release; ``config`` is in the shape this code deploys (schema ``CURRENT_VERSION``): the whole
        config, whose ``scope``'s section is what the release changes (release/scopes.py)."""
        row = {"created_at": time.time(), "actor": actor, "kind": kind, "note": note,
               "config": json.dumps(config, sort_keys=True), "changed": json.dumps(changed), "status": status,
               "schema_version": CURRENT_VERSION, "scope": scope}
        with self._lock:
            for _ in range(5):  # numbered max + 1: a second writer (a controller being replaced) takes the next
                try:
                    with self.engine.begin() as conn:
                        n = (conn.execute(select(func.max(releases.c.n))).scalar() or 0) + 1
                        conn.execute(insert(releases).values(n=n, **row))
                    self._last_good = None
                    return n
                except IntegrityError:
                    continue
            raise RuntimeError("could not number a release: the history is being written by another controller")

    @store.answering
    def finish(self, n: int, status: str, outcome: str, rolled_back_to: int | None = None) -> None:
        with self._lock, self.engine.begin() as conn:
            conn.execute(update(releases).where(releases.c.n == n).values(
                status=status, outcome=outcome, finished_at=time.time(), rolled_back_to=rolled_back_to))
            self._last_good = None

    @store.answering
    def get(self, n: int) -> dict[str, Any] | None:
        rows = self._rows(select(releases).where(releases.c.n == n))
        return rows[0] if rows else None

    @store.answering
    def list(self, limit: int = 100) -> Records:
        return self._rows(select(releases).order_by(releases.c.n.desc()).limit(limit))

    def last_good(self, before: int | None = None) -> dict[str, Any] | None:
        if before is None:
            cached = self._last_good
            if cached is None:
                cached = self._last_good = self._read_last_good(None)
            return cached and {**cached, "config": copy.deepcopy(cached["config"])}
        return self._read_last_good(before)

    @store.answering
    def _read_last_good(self, before: int | None) -> dict[str, Any] | None:
        q = select(releases).where(releases.c.status == "good")
        if before is not None:
            q = q.where(releases.c.n < before)
        rows = self._rows(q.order_by(releases.c.n.desc()).limit(1))
        return rows[0] if rows else None

    @store.answering
    def good_version(self) -> tuple[int, int]:
        """(How many releases are good, the newest of them): changes whenever a release turns good, so what is
        composed from the good releases can be kept until it does."""
        with self.engine.connect() as conn:
            count, newest = conn.execute(
                select(func.count(), func.max(releases.c.n)).where(releases.c.status == "good")).one()
        return count, newest or 0

    @store.answering
    def good(self, whole: bool = False) -> Records:
        """Every good release in release order, from the last good one of the whole application on (what the
        running config is composed of: release/scopes.py ``compose``); ``whole``: from the first on."""
        start = None
        if not whole:
            with self.engine.connect() as conn:
                start = conn.execute(select(func.max(releases.c.n)).where(
                    releases.c.status == "good", releases.c.scope == "app")).scalar()
        return self._rows(select(releases).where(releases.c.status == "good", releases.c.n >= (start or 0))
                          .order_by(releases.c.n))

    @store.answering
    def audit(self, actor: str, action: str, allowed: bool, detail: str | None = None, *,
              max_rows: int | None = None, max_age_s: float | None = None) -> None:
        """Record an admin call; every ``PRUNE_EVERY`` records, rows past ``max_rows`` (the oldest) or older
        than ``max_age_s`` go (unauthenticated calls are recorded too, so the log must not grow without bound)."""
        with self._lock, self.engine.begin() as conn:
            conn.execute(insert(audit_table).values(at=time.time(), actor=actor, action=action,
                                                    allowed=int(allowed), detail=detail))
            self._audits += 1
            if (self._audits - 1) % PRUNE_EVERY == 0:  # the first record after a start, then every PRUNE_EVERY
                self._prune(conn, max_rows, max_age_s)

    def _prune(self, conn, max_rows: int | None, max_age_s: float | None) -> None:
        if max_age_s is not None:
            conn.execute(delete(audit_table).where(audit_table.c.at < time.time() - max_age_s))
        if max_rows is not None:
            newest = conn.execute(select(func.max(audit_table.c.id))).scalar() or 0
            conn.execute(delete(audit_table).where(audit_table.c.id <= newest - max_rows))

    @store.answering
    def audit_log(self, limit: int = 200) -> Records:
        t = audit_table.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.at, t.actor, t.action, t.allowed, t.detail).order_by(t.id.desc()).limit(limit))
            return [{"at": a, "actor": b, "action": c, "allowed": bool(d), "detail": e} for a, b, c, d, e in rows]
