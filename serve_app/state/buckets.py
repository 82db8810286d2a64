"""Rate-limit buckets shared by every ingress replica and node, in the state store.

A key's bucket (one for requests, one for tokens) is a row: its level and the time of its last refill. A
replica takes a *lease* (``take``) from it in one atomic UPDATE that refills the row to now, checks that the
lease fits and subtracts it: SQLite serializes the write, PostgreSQL locks the row, so two replicas never take
the same tokens. The replica then spends the lease locally (serve_app/ingress/limits.py), so the store is
written once per lease, not per request, and all replicas together never admit more than the bucket holds plus
the leases they hold.
"""

from __future__ import annotations

from sqlalchemy import Engine, case, insert, select, update
from sqlalchemy.exc import IntegrityError

from serve_app.state.tables import rate_buckets

_b = rate_buckets.c


def _refilled(rate: float, now: float):
    """The row's level refilled up to ``now`` at ``rate`` per minute, capped at a minute's worth (the burst).
    A clock behind the row's stamp (another node's) refills nothing rather than draining it."""
    elapsed = case((_b.stamp < now, now - _b.stamp), else_=0.0)
    raw = _b.level + elapsed * (rate / 60.0)
    return case((raw > rate, rate), else_=raw)


def take(engine: Engine, key: str, kind: str, rate: float, want: float, need: float, now: float) -> tuple[float, float]:
    """Take ``want`` from the key's ``kind`` bucket, else at least ``need``: (taken, the bucket's level after).
    Taken 0: not even ``need`` fits, and the level says how long until it does. A first use starts a full
    bucket."""
    where = (_b.key == key) & (_b.kind == kind)
    level = _refilled(rate, now)
    for _ in range(2):  # the second round only when another replica created the row between our two statements
        with engine.begin() as conn:
            for amount in dict.fromkeys((want, need)):
                row = conn.execute(update(rate_buckets).where(where & (level >= amount))
                                   .values(level=level - amount, stamp=case((_b.stamp < now, now), else_=_b.stamp))
                                   .returning(_b.level)).first()
                if row is not None:
                    return amount, row.level
            current = conn.execute(select(level).where(where)).scalar()
        if current is not None:
            return 0.0, float(current)
        amount = want if want <= rate else need
        if amount > rate:
            return 0.0, rate
        try:
            with engine.begin() as conn:
                conn.execute(insert(rate_buckets).values(key=key, kind=kind, level=rate - amount, stamp=now))
            return amount, rate - amount
        except IntegrityError:
            continue
    return 0.0, 0.0
