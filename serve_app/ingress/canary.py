"""A canary's traffic split, on the routing side: while a canary of a model is out (the ingress's
``user_config`` ``canaries: {<served model>: {app, deployment, share, release}}``, applied by ``reconfigure``),
each of that model's requests goes to the canary's LLM application with the canary's share and to the current
release's LLM otherwise; each side's outcomes are counted and flushed to the release controller every couple of
seconds (serve_app/release/canary.py judges)."""

from __future__ import annotations

import hashlib
import random
from typing import Any

from serve_app.protocol.canary import CANARY, PRIMARY, ArmStats


def _unit(session: str) -> float:
    """A session's fixed draw in [0, 1)."""
    return int.from_bytes(hashlib.blake2b(session.encode(), digest_size=8).digest(), "big") / 2**64


class CanaryRouter:
    """The ingress side: which LLM handle serves a request, and the per-side counts since the last flush."""

    def __init__(self, primary, canary, share: float, release: int, rng: random.Random | None = None):
        self.handles = {PRIMARY: primary, CANARY: canary}
        self.share, self.release = share, release
        self._rng = rng or random.Random()
        self._stats = {PRIMARY: ArmStats(), CANARY: ArmStats()}

    def pick(self, session: str | None = None) -> tuple[str, Any]:
        """A request's side: random with the canary's share, or for a session (serve_app/llm/router.py) a hash of
        it, so that a session's calls never switch sides while the share stays."""
        draw = self._rng.random() if not session else _unit(session)
        arm = CANARY if draw < self.share else PRIMARY
        return arm, self.handles[arm]

    def record(self, arm: str, ok: bool, ttft_ms: float | None = None) -> None:
        s = self._stats[arm]
        s.requests += 1
        s.errors += 0 if ok else 1
        if ttft_ms is not None:
            s.ttft_ms.append(ttft_ms)

    def flush(self) -> dict[str, dict[str, Any]] | None:
        """The counts since the last flush (None when nothing happened), reset."""
        if not any(s.requests for s in self._stats.values()):
            return None
        out = {arm: s.as_dict() for arm, s in self._stats.items()}
        self._stats = {PRIMARY: ArmStats(), CANARY: ArmStats()}
        return out
