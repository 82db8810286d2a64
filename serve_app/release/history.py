"""Durable release history and admin audit log (SQLite; one file in the state directory).

A release row holds the whole Serve config that was deployed, so any release can be deployed again
exactly. Rows are written before anything is applied and updated with the outcome, so a controller that
dies mid-deploy leaves a row that says so.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS releases (
    n INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    finished_at REAL,
    actor TEXT NOT NULL,
    kind TEXT NOT NULL,            -- deploy | rollback | scale | initial
    note TEXT,
    config TEXT NOT NULL,          -- the whole Serve config (JSON)
    changed TEXT NOT NULL,         -- what differs from the release it replaced (JSON list)
    status TEXT NOT NULL,          -- deploying | good | failed | superseded-while-deploying
    outcome TEXT,
    rolled_back_to INTEGER
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    allowed INTEGER NOT NULL,
    detail TEXT
);
"""


class History:
    def __init__(self, state_dir: str | Path):
        path = Path(state_dir)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / "releases.sqlite"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def _row(self, row) -> dict[str, Any]:
        keys = ["n", "created_at", "finished_at", "actor", "kind", "note", "config", "changed", "status", "outcome",
                "rolled_back_to"]
        d = dict(zip(keys, row))
        d["config"] = json.loads(d["config"])
        d["changed"] = json.loads(d["changed"])
        return d

    def add(self, *, actor: str, kind: str, note: str | None, config: dict, changed: list[str], status: str) -> int:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO releases (created_at, actor, kind, note, config, changed, status) VALUES (?,?,?,?,?,?,?)",
                (time.time(), actor, kind, note, json.dumps(config, sort_keys=True), json.dumps(changed), status),
            )
            return int(cur.lastrowid)

    def finish(self, n: int, status: str, outcome: str, rolled_back_to: int | None = None) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE releases SET status=?, outcome=?, finished_at=?, rolled_back_to=? WHERE n=?",
                (status, outcome, time.time(), rolled_back_to, n),
            )

    def get(self, n: int) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM releases WHERE n=?", (n,)).fetchone()
        return self._row(row) if row else None

    def list(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT * FROM releases ORDER BY n DESC LIMIT ?", (limit,)).fetchall()
        return [self._row(r) for r in rows]

    def last_good(self, before: int | None = None) -> dict[str, Any] | None:
        q, args = "SELECT * FROM releases WHERE status='good'", ()
        if before is not None:
            q, args = q + " AND n<?", (before,)
        row = self._db.execute(q + " ORDER BY n DESC LIMIT 1", args).fetchone()
        return self._row(row) if row else None

    def audit(self, actor: str, action: str, allowed: bool, detail: str | None = None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO audit (at, actor, action, allowed, detail) VALUES (?,?,?,?,?)",
                (time.time(), actor, action, int(allowed), detail),
            )

    def audit_log(self, limit: int = 200) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT at, actor, action, allowed, detail FROM audit ORDER BY id DESC LIMIT ?",
                                (limit,)).fetchall()
        return [{"at": a, "actor": b, "action": c, "allowed": bool(d), "detail": e} for a, b, c, d, e in rows]
