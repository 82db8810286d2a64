"""Durable release history and admin audit log (SQLite; one file in the state directory).

A release row holds the whole Serve config that was deployed, so any release can be deployed again
exactly. Rows are written before anything is applied and updated with the outcome, so a controller that
dies mid-deploy leaves a row that says so.

Each row also holds the schema version its config was written in (serve_app/config/versions.py): the
history gives configs back as they were stored, and whoever deploys one migrates it first
(release/plan.py ``stored_config``). Databases from before the column get it on opening, with version 1 for
their rows, which is what those rows are.
"""

from __future__ import annotations

import copy
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from serve_app.config.versions import CURRENT_VERSION

_SCHEMA = """
CREATE TABLE IF NOT EXISTS releases (
    n INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    finished_at REAL,
    actor TEXT NOT NULL,
    kind TEXT NOT NULL,            -- deploy | canary | rollback | scale | adapter-load | adapter-unload | initial
                                   -- | remove-model
    note TEXT,
    config TEXT NOT NULL,          -- the whole Serve config (JSON)
    changed TEXT NOT NULL,         -- what differs from the release it replaced (JSON list)
    status TEXT NOT NULL,          -- deploying | good | failed | superseded-while-deploying
    outcome TEXT,
    rolled_back_to INTEGER,
    schema_version INTEGER NOT NULL DEFAULT 1, -- of the config (config/versions.py); 1 for rows from before it
    scope TEXT NOT NULL DEFAULT 'app'          -- what it changes (release/scopes.py); rows from before: the app
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    allowed INTEGER NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
"""
# Added after the first databases were written: ``_upgrade`` adds it to those (the default is their version).
_ADDED_COLUMNS = {"schema_version": "INTEGER NOT NULL DEFAULT 1", "scope": "TEXT NOT NULL DEFAULT 'app'"}
_COLUMNS = ["n", "created_at", "finished_at", "actor", "kind", "note", "config", "changed", "status", "outcome",
            "rolled_back_to", "schema_version", "scope"]
# How often (in audit records) retention is applied: often enough to bound the log, rarely enough to cost
# nothing per call.
PRUNE_EVERY = 64
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM releases"
# Rows as dicts. A name of its own: inside History, ``list`` is the method.
Records = list[dict[str, Any]]


class History:
    def __init__(self, state_dir: str | Path):
        path = Path(state_dir)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / "releases.sqlite"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._upgrade()
        # The last good release, read on every /healthz and admin call: kept in memory between writes.
        self._last_good: dict[str, Any] | None = None
        self._audits = 0

    def _upgrade(self) -> None:
        """Add the columns a database written by an older serve_app lacks (CREATE TABLE IF NOT EXISTS keeps
        an existing table as it is)."""
        with self._lock:
            have = {row[1] for row in self._db.execute("PRAGMA table_info(releases)")}
            for name, decl in _ADDED_COLUMNS.items():
                if name not in have:
                    self._db.execute(f"ALTER TABLE releases ADD COLUMN {name} {decl}")

    def _row(self, row) -> dict[str, Any]:
        d = dict(zip(_COLUMNS, row, strict=True))
        d["config"] = json.loads(d["config"])
        d["changed"] = json.loads(d["changed"])
        return d

    def add(self, *, actor: str, kind: str, note: str | None, config: dict, changed: list[str], status: str,
            scope: str = "app") -> int:
        """Record a release; ``config`` is in the shape this code deploys (schema ``CURRENT_VERSION``): the whole
        config, whose ``scope``'s section is what the release changes (release/scopes.py)."""
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO releases (created_at, actor, kind, note, config, changed, status, schema_version, scope) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                (time.time(), actor, kind, note, json.dumps(config, sort_keys=True), json.dumps(changed), status,
                 CURRENT_VERSION, scope),
            )
            self._last_good = None
            # sqlite3 leaves lastrowid None only when no row was inserted, and the INSERT either inserts or raises.
            assert cur.lastrowid is not None
            return cur.lastrowid

    def finish(self, n: int, status: str, outcome: str, rolled_back_to: int | None = None) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE releases SET status=?, outcome=?, finished_at=?, rolled_back_to=? WHERE n=?",
                (status, outcome, time.time(), rolled_back_to, n),
            )
            self._last_good = None

    def get(self, n: int) -> dict[str, Any] | None:
        row = self._db.execute(f"{_SELECT} WHERE n=?", (n,)).fetchone()
        return self._row(row) if row else None

    def list(self, limit: int = 100) -> Records:
        rows = self._db.execute(f"{_SELECT} ORDER BY n DESC LIMIT ?", (limit,)).fetchall()
        return [self._row(r) for r in rows]

    def last_good(self, before: int | None = None) -> dict[str, Any] | None:
        if before is None:
            cached = self._last_good
            if cached is None:
                cached = self._last_good = self._read_last_good(None)
            return cached and {**cached, "config": copy.deepcopy(cached["config"])}
        return self._read_last_good(before)

    def _read_last_good(self, before: int | None) -> dict[str, Any] | None:
        q = f"{_SELECT} WHERE status='good'"
        args: tuple[int, ...] = ()
        if before is not None:
            q, args = q + " AND n<?", (before,)
        row = self._db.execute(q + " ORDER BY n DESC LIMIT 1", args).fetchone()
        return self._row(row) if row else None

    def good_version(self) -> tuple[int, int]:
        """(How many releases are good, the newest of them): changes whenever a release turns good, so what is
        composed from the good releases can be kept until it does."""
        count, newest = self._db.execute("SELECT COUNT(*), MAX(n) FROM releases WHERE status='good'").fetchone()
        return count, newest or 0

    def good(self, whole: bool = False) -> Records:
        """Every good release in release order, from the last good one of the whole application on (what the
        running config is composed of: release/scopes.py ``compose``); ``whole``: from the first on."""
        start = None if whole else self._db.execute(
            "SELECT MAX(n) FROM releases WHERE status='good' AND scope='app'").fetchone()[0]
        rows = self._db.execute(f"{_SELECT} WHERE status='good' AND n>=? ORDER BY n", (start or 0,)).fetchall()
        return [self._row(r) for r in rows]

    def audit(self, actor: str, action: str, allowed: bool, detail: str | None = None, *,
              max_rows: int | None = None, max_age_s: float | None = None) -> None:
        """Record an admin call; every ``PRUNE_EVERY`` records, rows past ``max_rows`` (the oldest) or older
        than ``max_age_s`` go (unauthenticated calls are recorded too, so the log must not grow without bound)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO audit (at, actor, action, allowed, detail) VALUES (?,?,?,?,?)",
                (time.time(), actor, action, int(allowed), detail),
            )
            self._audits += 1
            if (self._audits - 1) % PRUNE_EVERY == 0:  # the first record after a start, then every PRUNE_EVERY
                self._prune(max_rows, max_age_s)

    def _prune(self, max_rows: int | None, max_age_s: float | None) -> None:
        if max_age_s is not None:
            self._db.execute("DELETE FROM audit WHERE at < ?", (time.time() - max_age_s,))
        if max_rows is not None:
            self._db.execute("DELETE FROM audit WHERE id <= (SELECT MAX(id) FROM audit) - ?", (max_rows,))

    def audit_log(self, limit: int = 200) -> Records:
        rows = self._db.execute("SELECT at, actor, action, allowed, detail FROM audit ORDER BY id DESC LIMIT ?",
                                (limit,)).fetchall()
        return [{"at": a, "actor": b, "action": c, "allowed": bool(d), "detail": e} for a, b, c, d, e in rows]
