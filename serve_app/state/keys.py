"""API keys in the state store: made, changed and revoked at run time (``/admin/keys``, ``serve-app keys``),
read by every ingress replica (serve_app/ingress/keybook.py).

Only a key's SHA-256 is stored. A revoked key keeps its row (``revoked_at``): its name stays taken, and the key
file cannot bring it back (``seed`` adds only keys the store has never held). Every write bumps the "keys"
change counter in the same transaction, so a replica polls one row to learn that something changed.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from serve_app.protocol.keys import KeyEntry
from serve_app.state.tables import api_keys, rate_buckets, versions

COUNTER = "keys"
_FIELDS = ("tenant", "scopes", "models", "requests_per_minute", "tokens_per_minute")


class KeyExists(Exception):
    pass


class KeyNotFound(Exception):
    pass


def _row(entry: KeyEntry, source: str, now: float) -> dict[str, Any]:
    return {"sha256": entry.sha256, "name": entry.name, "tenant": entry.owner, "scopes": json.dumps(entry.scopes),
            "models": json.dumps(entry.models) if entry.models is not None else None,
            "requests_per_minute": entry.requests_per_minute, "tokens_per_minute": entry.tokens_per_minute,
            "source": source, "created_at": now, "updated_at": now, "revoked_at": None}


def _entry(row) -> KeyEntry:
    return KeyEntry(name=row.name, sha256=row.sha256, tenant=row.tenant, scopes=json.loads(row.scopes),
                    models=json.loads(row.models) if row.models is not None else None,
                    requests_per_minute=row.requests_per_minute, tokens_per_minute=row.tokens_per_minute)


def _record(row) -> dict[str, Any]:
    """A key as the admin API lists it (never its digest)."""
    entry = _entry(row)
    return {"name": entry.name, "tenant": entry.owner, "scopes": entry.scopes, "models": entry.models,
            "requests_per_minute": entry.requests_per_minute, "tokens_per_minute": entry.tokens_per_minute,
            "source": row.source, "created_at": row.created_at, "updated_at": row.updated_at,
            "revoked_at": row.revoked_at, "status": "revoked" if row.revoked_at else "active"}


class KeyStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def _bump(self, conn) -> None:
        # The counter's row comes with the schema (migration 0001).
        conn.execute(update(versions).where(versions.c.name == COUNTER).values(n=versions.c.n + 1))

    def version(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(versions.c.n).where(versions.c.name == COUNTER)).scalar() or 0

    def snapshot(self) -> tuple[int, bool, dict[str, KeyEntry]]:
        """(change counter, whether the store has ever held a key, the active keys by digest), read together."""
        with self.engine.connect() as conn:
            n = conn.execute(select(versions.c.n).where(versions.c.name == COUNTER)).scalar() or 0
            rows = conn.execute(select(api_keys)).all()
        return n, bool(rows), {r.sha256: _entry(r) for r in rows if r.revoked_at is None}

    def records(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [_record(r) for r in conn.execute(select(api_keys).order_by(api_keys.c.created_at, api_keys.c.name))]

    def create(self, entry: KeyEntry, source: str = "api") -> dict[str, Any]:
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(api_keys).values(**_row(entry, source, time.time())))
                self._bump(conn)
                return _record(conn.execute(select(api_keys).where(api_keys.c.sha256 == entry.sha256)).one())
        except IntegrityError:
            raise KeyExists(f"an API key named {entry.name!r} (or the same key) exists already") from None

    def update(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Change an active key's tenant, scopes, models or limits (``changes``: already validated)."""
        values = {k: v for k, v in changes.items() if k in _FIELDS}
        for k in ("scopes", "models"):
            if k in values and values[k] is not None:
                values[k] = json.dumps(values[k])
        with self.engine.begin() as conn:
            where = (api_keys.c.name == name) & api_keys.c.revoked_at.is_(None)
            if not conn.execute(update(api_keys).where(where).values(updated_at=time.time(), **values)).rowcount:
                raise KeyNotFound(f"no active API key named {name!r}")
            self._bump(conn)
            return _record(conn.execute(select(api_keys).where(api_keys.c.name == name)).one())

    def revoke(self, name: str) -> dict[str, Any]:
        """Revoke a key; its rate-limit buckets go with it (a revoked key is never charged again)."""
        with self.engine.begin() as conn:
            now = time.time()
            where = (api_keys.c.name == name) & api_keys.c.revoked_at.is_(None)
            if not conn.execute(update(api_keys).where(where).values(revoked_at=now, updated_at=now)).rowcount:
                raise KeyNotFound(f"no active API key named {name!r}")
            self._bump(conn)
            row = conn.execute(select(api_keys).where(api_keys.c.name == name)).one()
            conn.execute(delete(rate_buckets).where(rate_buckets.c.key == row.sha256))
            return _record(row)

    def seed(self, entries: list[KeyEntry]) -> int:
        """Add the key file's keys the store has never held (by digest or name); returns how many. The store's
        own rows win: a key revoked or changed at run time stays so while the file still lists it."""
        added = 0
        with self.engine.connect() as conn:
            digests = set(conn.execute(select(api_keys.c.sha256)).scalars())
            names = set(conn.execute(select(api_keys.c.name)).scalars())
        for entry in entries:
            if entry.sha256 in digests or entry.name in names:
                continue
            try:  # every replica seeds at its start: the first insert wins, the others find the row there
                with self.engine.begin() as conn:
                    conn.execute(insert(api_keys).values(**_row(entry, "file", time.time())))
                    self._bump(conn)
                added += 1
            except IntegrityError:
                continue
        return added
